package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/mrkrepltest"
)

// TestREADMECommands runs the README's "mrkrepl key" block (section
// "Command line") line by line, as written and in its order, against a
// partition: every command must exit 0. The variables the block sets get
// the partition's URLs instead of the README's; mrk-… is the key the block
// creates; "> FILE" redirects stdout; "events --follow" runs for a moment.
func TestREADMECommands(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	block := readmeBlock(t, string(readme), "## Command line")
	p := mrkrepltest.New(t, mrkrepltest.Options{})
	vars := map[string]string{
		"MRKREPL_SERVER": p.Region("us-east-1").URL,
		"MRKREPL_REGION": "us-east-1",
		"EU":             p.Region("eu-west-1").URL,
	}
	t.Chdir(t.TempDir())
	keyID := ""
	ran := 0
	for _, line := range strings.Split(block, "\n") {
		if i := strings.Index(line, "  #"); i >= 0 {
			line = line[:i]
		}
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if assigns, ok := strings.CutPrefix(line, "export "); ok || regexp.MustCompile(`^[A-Z_]+=`).MatchString(line) {
			if !ok {
				assigns = line
			}
			for _, a := range strings.Fields(assigns) {
				name, _, _ := strings.Cut(a, "=")
				v, known := vars[name]
				if !known {
					t.Fatalf("README sets %s, which this test does not know: %q", name, line)
				}
				t.Setenv(name, v)
			}
			continue
		}
		args := strings.Fields(os.Expand(strings.ReplaceAll(line, "mrk-…", keyID), func(v string) string { return vars[v] }))
		if args[0] != "mrkrepl" {
			t.Fatalf("README line is not a mrkrepl command: %q", line)
		}
		args = args[1:]
		out := ""
		if n := len(args); n >= 2 && args[n-2] == ">" {
			out, args = args[n-1], args[:n-2]
		}
		if strings.Contains(line, "mrk-…") && keyID == "" {
			t.Fatalf("%q names the key before a key create", line)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		if slices.Contains(args, "--follow") {
			ctx, cancel = context.WithTimeout(t.Context(), time.Second)
		}
		var stdout, stderr strings.Builder
		code := run(ctx, args, &stdout, &stderr)
		cancel()
		if code != 0 {
			t.Fatalf("README line %q exited %d:\n%s%s", line, code, stdout.String(), stderr.String())
		}
		ran++
		if out != "" {
			if err := os.WriteFile(out, []byte(stdout.String()), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if args[0] == "key" && args[1] == "create" {
			m := regexp.MustCompile(`(?m)^key id +(mrk-[0-9a-f]{32})$`).FindStringSubmatch(stdout.String())
			if m == nil {
				t.Fatalf("key create printed no key id:\n%s", stdout.String())
			}
			keyID = m[1]
		}
	}
	if ran < 10 {
		t.Fatalf("ran %d README commands; has the block moved?", ran)
	}
}

// readmeBlock returns the first ```sh block after heading in md.
func readmeBlock(t *testing.T, md, heading string) string {
	t.Helper()
	_, rest, ok := strings.Cut(md, "\n"+heading+"\n")
	if !ok {
		t.Fatalf("README has no %q", heading)
	}
	_, rest, ok = strings.Cut(rest, "```sh\n")
	if !ok {
		t.Fatalf("README has no sh block after %q", heading)
	}
	block, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatalf("README's block after %q does not end", heading)
	}
	return block
}
