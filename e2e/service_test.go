package e2e

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/internal/obs"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/nats-io/nats.go"
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

// TestMicroStats: "nats micro stats" tells the truth. The API's endpoints
// count every request, refused ones among the errors, as the workers'
// instances answered them (summed over the instances, as the nats CLI does).
func TestMicroStats(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{Regions: []string{"us-east-1", "eu-west-1"}, NoProxy: true})
	ctx := ctxT(t, time.Minute)
	c := p.Region("us-east-1").Client
	const ok, bad = 3, 2
	for range ok {
		if _, err := c.CreateKey(ctx, api.CreateKeyRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	for range bad {
		if _, err := c.DescribeKey(ctx, "mrk-00000000000000000000000000000000"); !client.IsNotFound(err) {
			t.Fatalf("describe a missing key: %v", err)
		}
	}
	nc, err := p.Connect("us-east-1", "stats")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// Every instance answers $SRV.STATS; gather the answers for a moment.
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.PublishRequest("$SRV.STATS.mrkrepl", inbox, nil); err != nil {
		t.Fatal(err)
	}
	type endpoint struct {
		Name           string        `json:"name"`
		NumRequests    int           `json:"num_requests"`
		NumErrors      int           `json:"num_errors"`
		ProcessingTime time.Duration `json:"processing_time"`
		LastError      string        `json:"last_error"`
	}
	requests, errs := map[string]int{}, map[string]int{}
	var lastErr string
	var busy time.Duration
	instances := 0
	for {
		m, err := sub.NextMsg(500 * time.Millisecond)
		if err != nil {
			break
		}
		var st struct {
			Endpoints []endpoint `json:"endpoints"`
		}
		if err := json.Unmarshal(m.Data, &st); err != nil {
			t.Fatal(err)
		}
		instances++
		for _, e := range st.Endpoints {
			requests[e.Name] += e.NumRequests
			errs[e.Name] += e.NumErrors
			if e.Name == api.OpDescribeKey && e.LastError != "" {
				lastErr = e.LastError
			}
			if e.Name == api.OpCreateKey {
				busy += e.ProcessingTime
			}
		}
	}
	if instances == 0 {
		t.Fatal("no stats from the API")
	}
	if requests[api.OpCreateKey] != ok || errs[api.OpCreateKey] != 0 {
		t.Errorf("create-key: %d requests, %d errors; want %d, 0", requests[api.OpCreateKey], errs[api.OpCreateKey], ok)
	}
	if requests[api.OpDescribeKey] != bad || errs[api.OpDescribeKey] != bad || lastErr == "" {
		t.Errorf("describe-key: %d requests, %d errors (last %q); want %d, %d", requests[api.OpDescribeKey], errs[api.OpDescribeKey], lastErr, bad, bad)
	}
	// Processing time covers the work (an HSM key generation and KV writes
	// per create-key), not only the hand-off to another goroutine.
	if busy < ok*50*time.Microsecond {
		t.Errorf("create-key processing time %s for %d requests: the work is not inside micro's accounting", busy, ok)
	}
	t.Logf("%d instances; create-key %d requests in %s", instances, requests[api.OpCreateKey], busy)
}
