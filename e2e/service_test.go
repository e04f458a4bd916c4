package e2e

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/obs"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
)

// TestServiceVersion: the micro service reports the build's version (that
// of mrkrepl_build_info, in SemVer form), as "nats micro info" shows it.
func TestServiceVersion(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{Regions: []string{"us-east-1", "eu-west-1"}})
	nc, err := p.Connect("us-east-1", "user")
	if err != nil {
		t.Fatal(err)
	}
	msg, err := nc.Request("$SRV.INFO.mrkrepl", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var info struct{ Version string }
	if err := json.Unmarshal(msg.Data, &info); err != nil {
		t.Fatal(err)
	}
	if want := obs.ReadBuildInfo().SemVer(); info.Version != want {
		t.Errorf("service version %q, want %q", info.Version, want)
	}
}
