package repl

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/txtar"
)

var update = flag.Bool("update", false, "rewrite the want section of testdata/*.txt")

// TestScenarios runs every testdata/*.txt: a txtar archive whose comment
// says what the scenario pins, whose "script" file is a list of commands
// (see world.run; "#" starts a comment) and whose "want" file is what they
// print. go test -run TestScenarios -update rewrites "want".
//
// Commands: regions R…; create R; replicate SRC DST; deliver [SRC->DST]
// [TYPE] [#N] | deliver all; drop …; dup …; tamper …; hold …; release; reorder; net; tick DURATION;
// hsm R unwrap fails|rakb-gone|exists; crash R; lose-cas R; rotate R;
// update-primary OLD NEW; schedule-deletion R; cancel-deletion R; records.
func TestScenarios(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenarios: %v", err)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txt"), func(t *testing.T) {
			a, err := txtar.ParseFile(file)
			if err != nil {
				t.Fatal(err)
			}
			var script, want *txtar.File
			for i := range a.Files {
				switch a.Files[i].Name {
				case "script":
					script = &a.Files[i]
				case "want":
					want = &a.Files[i]
				}
			}
			if script == nil {
				t.Fatal("no script section")
			}
			got := runScript(t, string(script.Data))
			if *update {
				if want == nil {
					a.Files = append(a.Files, txtar.File{Name: "want"})
					want = &a.Files[len(a.Files)-1]
				}
				want.Data = []byte(got)
				if err := os.WriteFile(file, txtar.Format(a), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if want == nil {
				t.Fatal("no want section (run with -update)")
			}
			if !bytes.Equal(want.Data, []byte(got)) {
				t.Errorf("output differs from want (run with -update to accept):\n%s", lineDiff(string(want.Data), got))
			}
		})
	}
}

// runScript runs the commands of a script and returns what they print.
func runScript(t *testing.T, script string) string {
	var out strings.Builder
	var w *world
	for n, line := range strings.Split(script, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out.WriteString("> " + line + "\n")
		if f := strings.Fields(line); f[0] == "regions" {
			w = newWorld(f[1:])
			continue
		}
		if w == nil {
			t.Fatalf("line %d: the first command must be regions", n+1)
		}
		before := w.snapshot()
		if err := w.run(line); err != nil {
			t.Fatalf("line %d: %s: %v", n+1, line, err)
		}
		w.diff(before, w.snapshot())
		for _, l := range w.log {
			out.WriteString("  " + l + "\n")
		}
		w.log = nil
	}
	return out.String()
}

// lineDiff shows the first lines where want and got differ.
func lineDiff(want, got string) string {
	wl, gl := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	shown := 0
	for i := 0; i < max(len(wl), len(gl)) && shown < 20; i++ {
		var w, g string
		if i < len(wl) {
			w = wl[i]
		}
		if i < len(gl) {
			g = gl[i]
		}
		if w != g {
			b.WriteString("- " + w + "\n+ " + g + "\n")
			shown++
		}
	}
	return b.String()
}
