package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/natstest"

	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// testBundle builds a bundle with a fresh key for each region.
func testBundle(t *testing.T, partition string, regions ...string) *messages.Bundle {
	t.Helper()
	var keys []messages.BundleKey
	now := time.Now()
	for _, r := range regions {
		k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, messages.BundleKey{Region: r, PublicKey: k.Public(), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)})
	}
	b, err := messages.NewBundle(partition, regions, keys)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSetBundle: the proxy takes a new bundle of its partition that keeps
// every region it bridges (one it does not bridge may be added), refuses
// any other, counts both, and keeps bridging the regions it started with.
func TestSetBundle(t *testing.T) {
	_, nc := natstest.Start(t, "setbundle")
	first := testBundle(t, "p", "a-1", "b-1")
	p, err := New(Config{Bundle: first, Conns: map[string]*nats.Conn{"a-1": nc, "b-1": nc}, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		b    *messages.Bundle
		want string
	}{
		{"nil", nil, "no bundle"},
		{"another partition", testBundle(t, "q", "a-1", "b-1"), `partition "q"`},
		{"a bridged region dropped", testBundle(t, "p", "a-1", "c-1"), "drops region b-1"},
	} {
		err := p.SetBundle(c.b)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: SetBundle = %v, want an error with %q", c.name, err, c.want)
		}
		if p.bundle() != first {
			t.Fatalf("%s: the refused bundle is in force", c.name)
		}
	}
	rotated := testBundle(t, "p", "a-1", "b-1")
	if err := p.SetBundle(rotated); err != nil || p.bundle() != rotated {
		t.Fatalf("same regions, new keys: %v", err)
	}
	grown := testBundle(t, "p", "a-1", "b-1", "c-1")
	if err := p.SetBundle(grown); err != nil || p.bundle() != grown {
		t.Fatalf("a region added: %v", err)
	}
	if got := p.Regions(); !slices.Equal(got, []string{"a-1", "b-1"}) {
		t.Errorf("Regions() = %v after a region was added, want the bridged ones", got)
	}
	for result, want := range map[string]float64{"ok": 2, "error": 3} {
		if got := testutil.ToFloat64(p.met.bundleReloads.WithLabelValues(result)); got != want {
			t.Errorf("bundle_reloads_total{result=%q} = %v, want %v", result, got, want)
		}
	}
}
