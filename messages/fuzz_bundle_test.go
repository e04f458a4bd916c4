package messages

import (
	"os"
	"testing"
)

// FuzzParseBundle: the trust-bundle parser never panics, and whatever it
// accepts marshals back to a bundle it accepts again with the same keys.
func FuzzParseBundle(f *testing.F) {
	if b, err := os.ReadFile("testdata/bundle.json"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(`{"partition":"p","regions":["a"],"keys":[]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := ParseBundle(data)
		if err != nil {
			return
		}
		out, err := b.MarshalJSON()
		if err != nil {
			t.Fatalf("accepted bundle does not marshal: %v", err)
		}
		b2, err := ParseBundle(out)
		if err != nil {
			t.Fatalf("marshalled bundle refused: %v", err)
		}
		if len(b2.Keys()) != len(b.Keys()) || b2.Partition() != b.Partition() {
			t.Fatal("round trip changed the bundle")
		}
	})
}
