package obs_test

import (
	"testing"

	"github.com/mrkrepl/mrkrepl/internal/obs"
)

// TestSemVer: the micro service's version is the build's, in SemVer form.
func TestSemVer(t *testing.T) {
	for v, want := range map[string]string{
		"v1.2.3":                             "1.2.3",
		"v0.4.0-rc.1":                        "0.4.0-rc.1",
		"v0.0.0-20250601000000-0123456789ab": "0.0.0-20250601000000-0123456789ab",
		"v1.2.3+dirty":                       "1.2.3+dirty",
		"1.2.3":                              "1.2.3",
		"(devel)":                            "0.0.0-devel",
		"unknown":                            "0.0.0-devel",
		"v1.2":                               "0.0.0-devel",
		"":                                   "0.0.0-devel",
	} {
		if got := (obs.BuildInfo{Version: v}).SemVer(); got != want {
			t.Errorf("SemVer of %q = %q, want %q", v, got, want)
		}
	}
}
