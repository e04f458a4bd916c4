package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestInspectSnakeCase inspects the messages package's vector of each
// message type: the body is shown under its type's name, and every field
// name is snake_case, as on the wire and in the rest of mrkrepl's JSON.
func TestInspectSnakeCase(t *testing.T) {
	snake := regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	var check func(path string, v any)
	check = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, f := range v {
				if !snake.MatchString(k) {
					t.Errorf("%s: field %q is not snake_case", path, k)
				}
				check(path+"."+k, f)
			}
		case []any:
			for _, f := range v {
				check(path, f)
			}
		}
	}
	for _, name := range []string{"init", "offer", "material", "receipt", "sync", "status", "handover", "accept"} {
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("..", "..", "messages", "testdata", "vectors", name+".json"))
			if err != nil {
				t.Fatal(err)
			}
			var vec struct{ Envelope string }
			if err := json.Unmarshal(data, &vec); err != nil {
				t.Fatal(err)
			}
			in := filepath.Join(t.TempDir(), "msg.hex")
			if err := os.WriteFile(in, []byte(vec.Envelope), 0o600); err != nil {
				t.Fatal(err)
			}
			var stdout, stderr strings.Builder
			if code := run(t.Context(), []string{"inspect", in}, &stdout, &stderr); code != 0 {
				t.Fatalf("inspect exited %d: %s", code, stderr.String())
			}
			var out map[string]any
			if err := json.Unmarshal([]byte(stdout.String()), &out); err != nil {
				t.Fatal(err)
			}
			body, ok := out[name].(map[string]any)
			if !ok || len(body) == 0 {
				t.Fatalf("no %q body in:\n%s", name, stdout.String())
			}
			if _, ok := body["key_id"]; !ok && name != "offer" && name != "material" && name != "receipt" {
				t.Errorf("%s body has no key_id: %v", name, body)
			}
			check(name, out)
		})
	}
}
