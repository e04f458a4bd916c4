package e2e

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/hsmfault"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/nats-io/nats.go"
)

// faultHSM wraps a destination's HSM so that its next UnwrapFromPeer stops
// at a chosen step (hsmfault), as a crash or a failing HSM would.
type faultHSM struct {
	hsmsvc.HSM
	next  atomic.Pointer[unwrapFault]
	calls atomic.Int32 // UnwrapFromPeer calls
}

type unwrapFault struct {
	slow    time.Duration // > 0: no fault, the unwrap takes this long
	step    hsmfault.Step // "" : the RAKB is lost before the unwrap, no K
	kill    *nats.Conn    // closed at the step, as kill -9 would: no ack, no nak, no receipt
	crashed chan time.Time
}

var errInjected = errors.New("injected fault")

func (f *faultHSM) UnwrapFromPeer(ctx context.Context, req hsmsvc.UnwrapRequest) error {
	f.calls.Add(1)
	fault := f.next.Swap(nil)
	if fault == nil {
		return f.HSM.UnwrapFromPeer(ctx, req)
	}
	if fault.slow > 0 {
		time.Sleep(fault.slow)
		return f.HSM.UnwrapFromPeer(ctx, req)
	}
	crash := func() error {
		if fault.kill != nil {
			fault.kill.Close()
		}
		fault.crashed <- time.Now()
		return errInjected
	}
	if fault.step == "" {
		// The window the old soft backend had: RAKB gone, K not stored.
		if err := f.HSM.DestroyAgreementKey(ctx, req.Context.ReplicationID); err != nil {
			return err
		}
		return crash()
	}
	return f.HSM.UnwrapFromPeer(hsmfault.With(ctx, func(s hsmfault.Step) error {
		if s == fault.step {
			return crash()
		}
		return nil
	}), req)
}

// TestUnwrapCrash stops the destination's unwrap after each of its steps,
// by a failing HSM call (the message is retried) and by a kill of the
// worker at that point (the message, pulled and not acked, is redelivered
// to the restarted worker after layout.AckWait), and, the window the old
// soft backend had, by losing the RAKB without storing K. Every replica
// ends ENABLED with the primary's key; a lost RAKB costs one fresh run
// (agreement_key_lost), never the replica. The kill cases log the time
// from the crash to ENABLED (docs/RELIABILITY.md).
//
//	go test ./e2e -run TestUnwrapCrash -v
func TestUnwrapCrash(t *testing.T) {
	dir := t.TempDir()
	p := mrkrepltest.New(t, mrkrepltest.Options{
		Dir: dir,
		HSM: func(r string) string { return "soft:" + dir + "/" + r + "/hsm" },
		// Longer than the test: a fresh run comes only from agreement_key_lost.
		RunTimeout:    5 * time.Minute,
		SweepInterval: 100 * time.Millisecond,
	})
	ctx := ctxT(t, 4*time.Minute)
	const src, dst = "us-east-1", "eu-west-1"
	c := p.Region(src).Client
	r := p.Region(dst)
	f := &faultHSM{HSM: r.HSM}
	p.KillWorker(dst)
	r.HSM = f
	if err := p.StartWorker(ctx, dst); err != nil {
		t.Fatal(err)
	}
	// A slow HSM (an unwrap of 2×AckWait) keeps its message: the worker
	// sends InProgress, and the material is not delivered again meanwhile.
	t.Run("slow", func(t *testing.T) {
		key, err := c.CreateKey(ctx, api.CreateKeyRequest{})
		if err != nil {
			t.Fatal(err)
		}
		f.calls.Store(0)
		f.next.Store(&unwrapFault{slow: 2 * layout.AckWait})
		if _, err := c.ReplicateKey(ctx, key.KeyID, dst); err != nil {
			t.Fatal(err)
		}
		if k, err := tryWait(ctx, c, key.KeyID, time.Minute, func(k *api.Key) bool {
			r, ok := replicaOf(k, dst)
			return ok && r.State == api.ReplicaEnabled
		}); err != nil {
			t.Fatalf("replica not ENABLED: %v %+v", err, k)
		}
		if n := f.calls.Load(); n != 1 {
			t.Errorf("%d unwraps of one material, want 1 (redelivered while the HSM worked)", n)
		}
	})
	steps := append([]hsmfault.Step{""}, hsmfault.UnwrapSteps...)
	for _, kill := range []bool{false, true} {
		for _, step := range steps {
			name := fmt.Sprintf("fail/%s", step)
			if kill {
				name = fmt.Sprintf("kill/%s", step)
			}
			if step == "" {
				name += "rakb_lost"
			}
			t.Run(name, func(t *testing.T) {
				key, err := c.CreateKey(ctx, api.CreateKeyRequest{})
				if err != nil {
					t.Fatal(err)
				}
				fault := &unwrapFault{step: step, crashed: make(chan time.Time, 1)}
				if kill {
					fault.kill = p.Region(dst).Conn
				}
				f.next.Store(fault)
				first, err := c.ReplicateKey(ctx, key.KeyID, dst)
				if err != nil {
					t.Fatal(err)
				}
				var crashed time.Time
				select {
				case crashed = <-fault.crashed:
				case <-ctx.Done():
					t.Fatal("the unwrap was never called")
				}
				if kill {
					p.KillWorker(dst)
					if err := p.StartWorker(ctx, dst); err != nil {
						t.Fatal(err)
					}
				}
				k, err := tryWait(ctx, c, key.KeyID, time.Minute, func(k *api.Key) bool {
					r, ok := replicaOf(k, dst)
					return ok && r.State == api.ReplicaEnabled
				})
				if err != nil {
					rep, _ := replicaOf(k, dst)
					t.Fatalf("replica not ENABLED: %v %+v", err, rep)
				}
				elapsed := time.Since(crashed)
				rep, _ := replicaOf(k, dst)
				if step == "" {
					run, err := c.DescribeReplication(ctx, first.ReplicationID)
					if err != nil || run.State != api.StateFailed || run.Reason != "destination reported agreement_key_lost" || rep.ReplicationID == first.ReplicationID {
						t.Errorf("lost RAKB: first run %v %+v, replica %+v; want the first run FAILED with agreement_key_lost and a fresh one", err, run, rep)
					}
				} else if rep.ReplicationID != first.ReplicationID {
					t.Errorf("replica completed by run %s, want the first run %s", rep.ReplicationID, first.ReplicationID)
				}
				sameKeyBothWays(t, ctx, p, key.KeyID, src, dst)
				if kill {
					t.Logf("recovery: %s: crash→ENABLED %s", name, elapsed.Round(time.Millisecond))
				}
			})
		}
	}
}

// sameKeyBothWays checks that ciphertext crosses between a and b both ways.
func sameKeyBothWays(t *testing.T, ctx context.Context, p *mrkrepltest.Partition, keyID, a, b string) {
	t.Helper()
	for _, d := range [][2]string{{a, b}, {b, a}} {
		ct, err := p.Region(d[0]).Client.Encrypt(ctx, keyID, []byte("crash"), nil)
		if err != nil {
			t.Fatalf("encrypt in %s: %v", d[0], err)
		}
		pt, err := p.Region(d[1]).Client.Decrypt(ctx, ct.CiphertextBlob, nil)
		if err != nil || string(pt.Plaintext) != "crash" {
			t.Fatalf("decrypt in %s of %s's ciphertext: %v", d[1], d[0], err)
		}
	}
}
