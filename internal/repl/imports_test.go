package repl

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestCoreHasNoIO checks the promise of the package doc: the core's own
// files import no context, NATS, HSM interface or goroutine machinery,
// and read no clock.
func TestCoreHasNoIO(t *testing.T) {
	files, _ := filepath.Glob("*.go")
	allowed := map[string]bool{
		"bytes": true, "crypto/hmac": true, "fmt": true, "math": true, "slices": true, "strings": true, "time": true,
		"github.com/mrkrepl/mrkrepl/api": true, "github.com/mrkrepl/mrkrepl/messages": true,
	}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range file.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if !allowed[p] {
				t.Errorf("%s imports %s: the core does no I/O (context, NATS, hsmsvc, sync …)", f, p)
			}
		}
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b := string(raw)
		for _, banned := range []string{"time.Now(", "go func", "time.Sleep(", "time.After("} {
			if strings.Contains(b, banned) {
				t.Errorf("%s contains %q", f, banned)
			}
		}
	}
}
