package workers

import (
	"strings"
	"testing"
)

// TestRequestKeyID: a rejected request event names its key when the body
// is JSON with a well-formed key id, whatever else is wrong with it.
func TestRequestKeyID(t *testing.T) {
	const key = "mrk-0123456789abcdef0123456789abcdef"
	for _, tc := range []struct{ body, want string }{
		{`{"key_id":"` + key + `","replica_region":"nowhere-1"}`, key},
		{`{"key_id":"` + key + `","unknown_field":1}`, key},
		{`{"key_id":"` + key + `"}`, key},
		{`{"key_id":"mrk-XYZ","replica_region":"eu-west-1"}`, ""},
		{`{"key_id":"MRK-0123456789ABCDEF0123456789ABCDEF"}`, ""},
		{`{"key_id":42}`, ""},
		{`{"replica_region":"eu-west-1"}`, ""},
		{`not json`, ""},
		{``, ""},
		{`{"key_id":"` + key + `","description":"` + strings.Repeat("x", maxRequest) + `"}`, ""},
	} {
		if got := requestKeyID([]byte(tc.body)); got != tc.want {
			t.Errorf("requestKeyID(%.60q) = %q, want %q", tc.body, got, tc.want)
		}
	}
}
