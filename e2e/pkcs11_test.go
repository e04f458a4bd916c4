package e2e

import (
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/softhsm"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/prometheus/client_golang/prometheus"
)

// TestInteropSoftAndPKCS11 replicates between a region on the soft backend
// and one on a SoftHSM2 token, in both directions, and checks that
// ciphertext crosses both ways. (Skips without SoftHSM2 unless
// MRKREPL_REQUIRE_SOFTHSM=1.)
func TestInteropSoftAndPKCS11(t *testing.T) {
	uri := softhsm.NewToken(t, "e2e-eu")
	opts := hsmsvc.Options{AllowHostKDF: true}
	if _, err := hsmsvc.InitPKCS11RSK(t.Context(), uri, opts); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	p := mrkrepltest.New(t, mrkrepltest.Options{
		Registerer: reg,
		Regions:    []string{"us-east-1", "eu-west-1"},
		HSMOptions: opts,
		HSM: func(r string) string {
			if r == "eu-west-1" {
				return uri
			}
			return "soft:"
		},
	})
	if b := p.Region("eu-west-1").HSM.Backend(); b != "pkcs11" {
		t.Fatalf("eu-west-1 runs %s, want pkcs11", b)
	}
	ctx := ctxT(t, 2*time.Minute)
	for _, dir := range []struct{ src, dst string }{{"us-east-1", "eu-west-1"}, {"eu-west-1", "us-east-1"}} {
		key, _ := newReplicatedKey(t, ctx, p.Region(dir.src).Client, dir.dst)
		crossDecrypt(t, ctx, key.KeyID, p.Regions())
	}
	// The host KDF is visible: on for the SoftHSM2 region, used once per
	// replication there (one unwrap, one wrap); off for the soft region.
	eu := prometheus.Labels{"instance": "worker-eu-west-1", "backend": "pkcs11"}
	if got := gathered(t, reg, "mrkrepl_worker_hsm_host_kdf", eu); got != 1 {
		t.Errorf("eu-west-1 host kdf gauge = %v, want 1", got)
	}
	if got := gathered(t, reg, "mrkrepl_worker_hsm_host_kdf_operations_total", eu); got != 2 {
		t.Errorf("eu-west-1 host kdf operations = %v, want 2", got)
	}
	if got := gathered(t, reg, "mrkrepl_worker_hsm_host_kdf", prometheus.Labels{"instance": "worker-us-east-1"}); got != 0 {
		t.Errorf("us-east-1 (soft) host kdf gauge = %v, want 0", got)
	}
}
