package bench

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestDataPlaneValidate(t *testing.T) {
	for _, c := range []struct {
		cfg  DataPlaneConfig
		want string
	}{
		{DataPlaneConfig{Op: "sign"}, "--op"},
		{DataPlaneConfig{Op: OpEncrypt, API: "grpc"}, "--api"},
		{DataPlaneConfig{Op: OpEncrypt, PeerURL: "http://x"}, "--peer-url needs --api kms"},
		{DataPlaneConfig{Op: OpEncrypt, API: APIKMS, Targets: []string{TargetFloor}}, "target"},
		{DataPlaneConfig{Op: OpEncrypt, Rate: -1}, "--rate"},
	} {
		err := c.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error with %q", c.cfg, err, c.want)
		}
	}
	if err := (&DataPlaneConfig{Op: OpDecrypt, API: APIKMS, PeerURL: "http://x", Targets: []string{TargetPeer}}).Validate(); err != nil {
		t.Error(err)
	}
}

// Every target of both APIs answers, each op, closed and open loop; the
// table names every target and ratio.
func TestRunDataPlane(t *testing.T) {
	if testing.Short() {
		t.Skip("starts partitions")
	}
	for _, c := range []DataPlaneConfig{
		{Op: OpEncrypt, API: APINATS, Count: 50, Concurrency: 8, CompareAudit: true},
		{Op: OpDecrypt, API: APINATS, Duration: 200 * time.Millisecond, Rate: 200},
		{Op: OpGenerateDataKey, API: APIKMS, Count: 30, Concurrency: 4},
		{Op: OpDecrypt, API: APIKMS, Count: 30, Concurrency: 4},
	} {
		c.Rounds, c.Warmup, c.Keys = 2, -1, 2
		t.Run(c.Op+"/"+c.API, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			res, err := RunDataPlane(ctx, c)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Phases) != 2*len(res.Targets) || len(res.Ratios) == 0 {
				t.Fatalf("phases %d, targets %d, ratios %d", len(res.Phases), len(res.Targets), len(res.Ratios))
			}
			for _, ph := range res.Phases {
				if ph.Requests == 0 || ph.Errors > 0 || ph.RequestsPerSecond <= 0 || ph.P99MS <= 0 {
					t.Errorf("phase %+v", ph)
				}
				if c.Count > 0 && ph.Requests != c.Count {
					t.Errorf("%s: %d requests, want %d", ph.Target, ph.Requests, c.Count)
				}
			}
			var b bytes.Buffer
			if err := res.WriteTable(&b); err != nil {
				t.Fatal(err)
			}
			for _, tg := range res.Targets {
				if !strings.Contains(b.String(), tg.Target) {
					t.Errorf("table lacks %s:\n%s", tg.Target, b.String())
				}
			}
		})
	}
}

// The peer target works against any endpoint that answers the SDK (here
// a stub that accepts CreateKey, Encrypt and Decrypt without checking).
func TestRunDataPlanePeer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a partition")
	}
	peer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		switch r.Header.Get("X-Amz-Target") {
		case "TrentService.CreateKey":
			_, _ = w.Write([]byte(`{"KeyMetadata":{"KeyId":"k1","Arn":"arn:aws:kms:us-east-1:111122223333:key/k1"}}`))
		case "TrentService.Encrypt":
			_, _ = w.Write([]byte(`{"CiphertextBlob":"QUJD","KeyId":"k1"}`))
		default:
			_, _ = w.Write([]byte(`{"Plaintext":"QUJD","KeyId":"k1"}`))
		}
	}))
	defer peer.Close()
	res, err := RunDataPlane(t.Context(), DataPlaneConfig{Op: OpDecrypt, API: APIKMS, PeerURL: peer.URL,
		Targets: []string{TargetMrkrepl, TargetPeer}, Count: 20, Concurrency: 2, Rounds: 1, Warmup: -1, Keys: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Ratios) != 1 || res.Ratios[0].To != TargetPeer {
		t.Fatalf("ratios %+v", res.Ratios)
	}
}
