package workers

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/natstest"

	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// rotationFixture is a worker (not started: SetBundle and rsk() need no
// NATS) of region "a-1" with a soft HSM holding its default RSK and one
// more, and a clock the test moves.
type rotationFixture struct {
	w        *Worker
	hsm      hsmsvc.HSM
	old, new crypto.Signer // the HSM's default RSK and the rotation one
	peer     *ecdsa.PrivateKey
	now      atomic.Pointer[time.Time]
	t0       time.Time
}

func kidOf(t *testing.T, pub crypto.PublicKey) []byte {
	t.Helper()
	kid, err := messages.KID(pub)
	if err != nil {
		t.Fatal(err)
	}
	return kid
}

// bundleOf builds a bundle of partition p with regions a-1 and b-1, the
// peer's key for b-1 and keys for a-1.
func (f *rotationFixture) bundleOf(t *testing.T, partition string, regions []string, keys ...messages.BundleKey) *messages.Bundle {
	t.Helper()
	if len(regions) == 0 {
		regions = []string{"a-1", "b-1"}
	}
	for _, r := range regions {
		if r == "b-1" {
			keys = append(keys, f.entry(t, "b-1", f.peer.Public(), -time.Hour, 365*24*time.Hour))
		}
	}
	b, err := messages.NewBundle(partition, regions, keys)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// entry is a bundle entry valid from t0+from to t0+to.
func (f *rotationFixture) entry(t *testing.T, region string, pub crypto.PublicKey, from, to time.Duration) messages.BundleKey {
	return messages.BundleKey{Region: region, KID: kidOf(t, pub), PublicKey: pub, NotBefore: f.t0.Add(from), NotAfter: f.t0.Add(to)}
}

func newRotationFixture(t *testing.T, wrap func(hsmsvc.HSM) hsmsvc.HSM) *rotationFixture {
	t.Helper()
	ctx := t.Context()
	_, nc := natstest.Start(t, "setbundle")
	h, err := hsmsvc.Open(ctx, "soft:", hsmsvc.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	f := &rotationFixture{hsm: h, old: h.Signer(), t0: time.Now().Truncate(time.Second)}
	if f.new, err = h.(hsmsvc.RSKRotator).CreateRSK(ctx); err != nil {
		t.Fatal(err)
	}
	if f.peer, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	f.now.Store(&f.t0)
	hsm := h
	if wrap != nil {
		hsm = wrap(h)
	}
	// The old key only: the new one is not in the first bundle.
	first := f.bundleOf(t, "p", nil, f.entry(t, "a-1", f.old.Public(), -time.Hour, 365*24*time.Hour))
	f.w, err = New(Config{Region: "a-1", Bundle: first, HSM: hsm, Conn: nc, Registerer: prometheus.NewRegistry(),
		Now: func() time.Time { return *f.now.Load() }})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *rotationFixture) at(d time.Duration) {
	t := f.t0.Add(d)
	f.now.Store(&t)
}

// wantSigner checks that rsk() returns want and its kid, and that the pair
// really signs for that kid.
func (f *rotationFixture) wantSigner(t *testing.T, what string, want crypto.Signer) {
	t.Helper()
	s, kid := f.w.rsk()
	if !bytes.Equal(kid, kidOf(t, want.Public())) || !bytes.Equal(kidOf(t, s.Public()), kid) {
		t.Errorf("%s: rsk() gives kid %x, want %x", what, kid[:8], kidOf(t, want.Public())[:8])
	}
}

func reloads(w *Worker, result string) float64 {
	return testutil.ToFloat64(w.met.bundleReloads.WithLabelValues(result))
}

// TestRSKPickedByBundle: the worker signs with the newest RSK its HSM holds
// and the bundle in force lists as valid now; a new bundle is picked up
// without a restart, and the RSK changes with the clock at not_before and
// not_after.
func TestRSKPickedByBundle(t *testing.T) {
	f := newRotationFixture(t, nil)
	const year = 365 * 24 * time.Hour
	f.wantSigner(t, "first bundle (old key only)", f.old)

	// The new key, valid from t0+1h: the old one signs until then.
	b := f.bundleOf(t, "p", nil,
		f.entry(t, "a-1", f.old.Public(), -time.Hour, year),
		f.entry(t, "a-1", f.new.Public(), time.Hour, 2*year))
	if err := f.w.SetBundle(b); err != nil {
		t.Fatal(err)
	}
	if f.w.bundle() != b {
		t.Fatal("bundle() is not the bundle just set")
	}
	f.wantSigner(t, "before the new key's not_before", f.old)
	f.at(time.Hour - time.Millisecond)
	f.wantSigner(t, "1 ms before not_before", f.old)
	f.at(time.Hour)
	f.wantSigner(t, "at not_before", f.new)
	f.at(year + time.Second)
	f.wantSigner(t, "after the old key's not_after", f.new)
	// Nothing valid: the HSM's default key, so that receivers say why.
	f.at(2*year + time.Second)
	f.wantSigner(t, "after every not_after", f.old)

	// The old key retired, then removed: the new one, whatever the clock.
	f.at(0)
	b = f.bundleOf(t, "p", nil,
		f.entry(t, "a-1", f.old.Public(), -time.Hour, -time.Minute),
		f.entry(t, "a-1", f.new.Public(), -time.Minute, 2*year))
	if err := f.w.SetBundle(b); err != nil {
		t.Fatal(err)
	}
	f.wantSigner(t, "old key retired", f.new)
	if err := f.w.SetBundle(f.bundleOf(t, "p", nil, f.entry(t, "a-1", f.new.Public(), time.Hour, 2*year))); err != nil {
		t.Fatal(err)
	}
	f.wantSigner(t, "old key removed, new one not yet valid (fallback)", f.new)
	if got := reloads(f.w, "ok"); got != 3 {
		t.Errorf("bundle_reloads_total{result=ok} = %v, want 3", got)
	}
}

// TestSetBundleRefusals: a bundle the worker cannot work with is refused,
// counted as an error, and the bundle in force stays.
func TestSetBundleRefusals(t *testing.T) {
	f := newRotationFixture(t, nil)
	const year = 365 * 24 * time.Hour
	inForce := f.w.bundle()
	stranger, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	oldA := f.entry(t, "a-1", f.old.Public(), -time.Hour, year)
	for _, c := range []struct {
		name string
		b    *messages.Bundle
		want string
	}{
		{"nil", nil, "no bundle"},
		{"another partition", f.bundleOf(t, "q", nil, oldA), `partition "q"`},
		{"without the worker's region", f.bundleOf(t, "p", []string{"b-1", "c-1"}), "drops the worker's region a-1"},
		{"none of the hsm's rsks", f.bundleOf(t, "p", nil, f.entry(t, "a-1", stranger.Public(), -time.Hour, year)), "none of the hsm's rsks"},
		{"the hsm's rsk for another region", f.bundleOf(t, "p", []string{"a-1", "b-1", "c-1"}, f.entry(t, "c-1", f.old.Public(), -time.Hour, year)), "none of the hsm's rsks"},
	} {
		err := f.w.SetBundle(c.b)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: SetBundle = %v, want an error with %q", c.name, err, c.want)
		}
		if f.w.bundle() != inForce {
			t.Fatalf("%s: the refused bundle is in force", c.name)
		}
		f.wantSigner(t, c.name, f.old)
	}
	if got := reloads(f.w, "error"); got != 5 {
		t.Errorf("bundle_reloads_total{result=error} = %v, want 5", got)
	}
	// A region added (or another dropped) is accepted: the worker serves
	// only its own.
	if err := f.w.SetBundle(f.bundleOf(t, "p", []string{"a-1", "c-1"}, oldA)); err != nil {
		t.Errorf("bundle that drops b-1 and adds c-1: %v", err)
	}
}

// notRotator hides the HSM's RSKRotator: the worker then knows only Signer.
type notRotator struct{ hsmsvc.HSM }

// TestSetBundleWithoutRotator: an HSM without RSKRotator signs with its
// Signer only; a bundle listing only another of its keys is refused.
func TestSetBundleWithoutRotator(t *testing.T) {
	f := newRotationFixture(t, func(h hsmsvc.HSM) hsmsvc.HSM { return notRotator{h} })
	const year = 365 * 24 * time.Hour
	if err := f.w.SetBundle(f.bundleOf(t, "p", nil,
		f.entry(t, "a-1", f.old.Public(), -time.Hour, year),
		f.entry(t, "a-1", f.new.Public(), -time.Minute, 2*year))); err != nil {
		t.Fatal(err)
	}
	f.wantSigner(t, "only Signer is known", f.old)
	if err := f.w.SetBundle(f.bundleOf(t, "p", nil, f.entry(t, "a-1", f.new.Public(), -time.Minute, 2*year))); err == nil {
		t.Error("a bundle without the HSM's Signer was accepted")
	}
}

// TestNewNeedsAnRSKOfTheHSM: New refuses a bundle without any of the HSM's
// RSKs for the region, and accepts one that lists only a rotation RSK.
func TestNewNeedsAnRSKOfTheHSM(t *testing.T) {
	f := newRotationFixture(t, nil)
	cfg := f.w.cfg
	cfg.Registerer = nil
	cfg.Bundle = f.bundleOf(t, "p", nil, f.entry(t, "a-1", f.new.Public(), -time.Minute, time.Hour))
	w, err := New(cfg)
	if err != nil {
		t.Fatalf("New with the rotation RSK only: %v", err)
	}
	if _, kid := w.rsk(); !bytes.Equal(kid, kidOf(t, f.new.Public())) {
		t.Error("New with the rotation RSK only does not sign with it")
	}
	cfg.Bundle = f.bundleOf(t, "p", nil)
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "none of the hsm's rsks") {
		t.Errorf("New with no RSK of the HSM: %v", err)
	}
}

// TestSignedWithRSKValidAtSentAt: a message made just before a new RSK's
// not_before and signed just after it (the HSM work between the two) is
// signed with the RSK valid at its sent_at, and verifies; signed with the
// RSK valid at the time of signing it carried a kid not yet valid at its
// sent_at, and receivers refused it as kid_not_valid (seen in CI's
// TestRSKRotation: a receipt refused by the proxy).
func TestSignedWithRSKValidAtSentAt(t *testing.T) {
	f := newRotationFixture(t, nil)
	const year = 365 * 24 * time.Hour
	b := f.bundleOf(t, "p", nil,
		f.entry(t, "a-1", f.old.Public(), -time.Hour, year),
		f.entry(t, "a-1", f.new.Public(), time.Hour, 2*year))
	if err := f.w.SetBundle(b); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name       string
		made, sign time.Duration // clock when the message is made, and when it is signed
		want       crypto.Signer
	}{
		{"made and signed before not_before", time.Hour - 2*time.Millisecond, time.Hour - time.Millisecond, f.old},
		{"made before not_before, signed after", time.Hour - time.Millisecond, time.Hour + 5*time.Millisecond, f.old},
		{"made at not_before", time.Hour, time.Hour + 5*time.Millisecond, f.new},
	} {
		f.at(c.made)
		m := f.w.newMessage(messages.TypeReceipt, messages.NewID(), "b-1")
		m.Receipt = &messages.Receipt{MaterialDigest: make([]byte, 48), Status: messages.StatusOK, KeyConfirmation: make([]byte, 16)}
		f.at(c.sign)
		raw, kid, err := f.w.sign(m)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if want := kidOf(t, c.want.Public()); !bytes.Equal(kid, want) {
			t.Errorf("%s: signed with kid %x, want %x", c.name, kid[:8], want[:8])
		}
		if _, err := messages.Verify(raw, messages.VerifyOptions{Bundle: b, Now: f.t0.Add(c.sign), Receiver: "b-1"}); err != nil {
			t.Errorf("%s: the receiver refuses it: %v", c.name, err)
		}
	}
}
