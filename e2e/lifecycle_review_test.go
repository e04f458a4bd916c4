package e2e

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/nats-io/nats.go/jetstream"
)

// Review of the key lifecycle (docs/LIFECYCLE.md): races between requests,
// lost or delayed lifecycle messages, and states that never settle. Each
// TestReview_* began as a demonstration of a bug found in review (or of a
// path nothing else covered) and stays as its regression test.
//
// Races are made deterministic with gateHSM: the region's HSM, wrapped so
// that a test can hold one HSM call (as a slow network HSM would) while
// another request runs to completion.

// gateHSM wraps a region's HSM. Each hook, when set, runs before the call
// it is named after.
type gateHSM struct {
	hsmsvc.HSM
	mu       sync.Mutex
	generate func(ref hsmsvc.KeyRef)
	unwrap   func(req hsmsvc.UnwrapRequest)
	sign     func()
}

func (g *gateHSM) hooks() (func(hsmsvc.KeyRef), func(hsmsvc.UnwrapRequest), func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.generate, g.unwrap, g.sign
}

func (g *gateHSM) set(fn func(g *gateHSM)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	fn(g)
}

func (g *gateHSM) GenerateKey(ctx context.Context, ref hsmsvc.KeyRef) error {
	if f, _, _ := g.hooks(); f != nil {
		f(ref)
	}
	return g.HSM.GenerateKey(ctx, ref)
}

func (g *gateHSM) UnwrapFromPeer(ctx context.Context, req hsmsvc.UnwrapRequest) error {
	if _, f, _ := g.hooks(); f != nil {
		f(req)
	}
	return g.HSM.UnwrapFromPeer(ctx, req)
}

func (g *gateHSM) Signer() crypto.Signer { return gateSigner{g.HSM.Signer(), g} }

type gateSigner struct {
	crypto.Signer
	g *gateHSM
}

func (s gateSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if _, _, f := s.g.hooks(); f != nil {
		f()
	}
	return s.Signer.Sign(r, digest, opts)
}

// gate restarts region's worker on a gateHSM wrapping the region's HSM
// (the same device: keys and RSK are kept). Hooks are cleared in cleanup,
// before the partition stops.
func gate(t *testing.T, ctx context.Context, p *mrkrepltest.Partition, region string) *gateHSM {
	t.Helper()
	r := p.Region(region)
	g := &gateHSM{HSM: r.HSM}
	p.KillWorker(region)
	r.HSM = g
	if err := p.StartWorker(ctx, region); err != nil {
		t.Fatal(err)
	}
	return g
}

// gateChan returns a channel and the func that closes it (once); it is
// closed when the test ends too (before the partition stops), so that no
// HSM call stays blocked.
// holdNextSign makes the next signature through g wait until the returned
// release is called (or the test ends); entered is closed when it waits.
func (g *gateHSM) holdNextSign(t *testing.T) (entered chan struct{}, release func()) {
	entered = make(chan struct{})
	wait, release := gateChan(t)
	var armed atomic.Bool
	armed.Store(true)
	g.set(func(g *gateHSM) {
		g.sign = func() {
			if armed.CompareAndSwap(true, false) {
				close(entered)
				<-wait
			}
		}
	})
	return entered, release
}

func gateChan(t *testing.T) (chan struct{}, func()) {
	ch := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(ch) }) }
	t.Cleanup(release)
	return ch, release
}

type keyResult struct {
	key *api.Key
	err error
}

// replicaOf returns region's entry in k.Replicas.
func replicaOf(k *api.Key, region string) (api.Replica, bool) {
	if k == nil {
		return api.Replica{}, false
	}
	for _, r := range k.Replicas {
		if r.Region == region {
			return r, true
		}
	}
	return api.Replica{}, false
}

// settledReplicas reports whether every replica the primary lists is
// ENABLED and has confirmed the primary's epoch.
func settledReplicas(k *api.Key) bool {
	if k == nil || k.KeyState != api.KeyStateEnabled {
		return false
	}
	for _, r := range k.Replicas {
		if r.State != api.ReplicaEnabled || r.SyncedEpoch != k.Epoch {
			return false
		}
	}
	return true
}

// tryWait is WaitKey with its own deadline; it does not fail the test.
func tryWait(ctx context.Context, c *client.Client, keyID string, d time.Duration, cond func(*api.Key) bool) (*api.Key, error) {
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return c.WaitKey(wctx, keyID, cond)
}

// keysBucket opens region's KEYS bucket, to see what describe-key hides
// (a replica's tombstone).
func keysBucket(t *testing.T, ctx context.Context, p *mrkrepltest.Partition, region string) jetstream.KeyValue {
	t.Helper()
	nc, err := p.Connect(region, "review-reader")
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, layout.KeysBucket(region))
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// ---- races ------------------------------------------------------------

// TestReview_ConcurrentRotationsKeepRecordedVersion: two rotate-key
// requests for the same key at once. Both read the key at version 1 and
// both generate version 2; the second finds it in the HSM and, taking it
// for a leftover of a crash, destroys and regenerates it — although the
// first request has recorded it, made it current (no replica) and a
// client has encrypted with it. That ciphertext no longer decrypts.
func TestReview_ConcurrentRotationsKeepRecordedVersion(t *testing.T) {
	p := lifecyclePartition(t, mrkrepltest.Options{})
	ctx := ctxT(t, time.Minute)
	g := gate(t, ctx, p, us)
	c := p.Region(us).Client
	key, err := c.CreateKey(ctx, api.CreateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// The first generate waits until the second request has read the key
	// too; the second waits until the first rotation has been used.
	bothRead := make(chan struct{})
	used, useDone := gateChan(t)
	var calls atomic.Int32
	g.set(func(g *gateHSM) {
		g.generate = func(ref hsmsvc.KeyRef) {
			switch calls.Add(1) {
			case 1:
				select {
				case <-bothRead:
				case <-time.After(10 * time.Second):
				}
			case 2:
				close(bothRead)
				<-used
			}
		}
	})
	results := make(chan keyResult, 2)
	for range 2 {
		go func() {
			k, err := c.RotateKey(ctx, key.KeyID)
			results <- keyResult{k, err}
		}()
	}
	// With the version number reserved before it is generated, one
	// request wins and the other is refused at once (it never reaches the
	// HSM); the winner's generate then finds the gate's second call never
	// comes and goes on after its wait.
	var ok, refused []keyResult
	for range 2 {
		r := <-results
		if r.err == nil {
			ok = append(ok, r)
		} else if apiCode(r.err) == api.CodeConflict {
			refused = append(refused, r)
		} else {
			t.Fatalf("rotation: %v", r.err)
		}
	}
	useDone()
	g.set(func(g *gateHSM) { g.generate = nil })
	if len(ok) != 1 || len(refused) != 1 {
		t.Fatalf("concurrent rotations: %d succeeded, %d refused; want 1 and 1", len(ok), len(refused))
	}
	if ok[0].key.CurrentVersion != 2 || calls.Load() != 1 {
		t.Fatalf("winner: current %d, HSM generate calls %d; want 2 and 1", ok[0].key.CurrentVersion, calls.Load())
	}
	ct, err := c.Encrypt(ctx, key.KeyID, []byte("made with v2"), nil)
	if err != nil || ct.Version != 2 {
		t.Fatalf("encrypt after the rotation: %v %+v", err, ct)
	}
	// A third rotation now goes to version 3 and leaves version 2 alone.
	if k, err := c.RotateKey(ctx, key.KeyID); err != nil || k.CurrentVersion != 3 {
		t.Fatalf("third rotation: %v %+v", err, k)
	}
	pt, err := c.Decrypt(ctx, ct.CiphertextBlob, nil)
	if err != nil || string(pt.Plaintext) != "made with v2" {
		t.Errorf("ciphertext made with the recorded version 2 no longer decrypts: %v", err)
	}
}

// TestReview_RotateRacingUpdatePrimary: while a rotation is generating
// its version (the number reserved in the key record), update-primary is
// refused: the hand-over would not list the version being made, and the
// old primary would keep a version 2 the new primary knows nothing of (its
// own version 2 would then fail key confirmation there). After the
// rotation, the hand-over and a rotation at the new primary work.
func TestReview_RotateRacingUpdatePrimary(t *testing.T) {
	p := lifecyclePartition(t, mrkrepltest.Options{MessageTTL: 3 * time.Second, RunTimeout: 3 * time.Second, MaxAttempts: 2})
	ctx := ctxT(t, 2*time.Minute)
	g := gate(t, ctx, p, us)
	c := p.Region(us).Client
	key, _ := newReplicatedKey(t, ctx, c, eu)
	waitKey(t, ctx, c, key.KeyID, "eu synced", settledReplicas)

	entered := make(chan struct{})
	release, releaseGen := gateChan(t)
	var once sync.Once
	g.set(func(g *gateHSM) {
		g.generate = func(hsmsvc.KeyRef) { once.Do(func() { close(entered) }); <-release }
	})
	rotated := make(chan keyResult, 1)
	go func() {
		k, err := c.RotateKey(ctx, key.KeyID)
		rotated <- keyResult{k, err}
	}()
	<-entered // the rotation has reserved version 2 and is generating it
	// A hand-over asked meanwhile is refused: the new primary would not
	// know the version being made.
	if _, err := c.UpdatePrimaryRegion(ctx, key.KeyID, eu); apiCode(err) != api.CodeConflict {
		t.Fatalf("update-primary during a rotation: %v, want 409", err)
	}
	releaseGen()
	res := <-rotated
	g.set(func(g *gateHSM) { g.generate = nil })
	if res.err != nil {
		t.Fatalf("rotation: %v", res.err)
	}
	waitKey(t, ctx, c, key.KeyID, "v2 current", client.VersionActive(2))
	waitKey(t, ctx, c, key.KeyID, "eu synced", settledReplicas)
	if _, err := c.UpdatePrimaryRegion(ctx, key.KeyID, eu); err != nil {
		t.Fatalf("update-primary after the rotation: %v", err)
	}
	euc := p.Region(eu).Client
	waitKey(t, ctx, c, key.KeyID, "us names eu", client.PrimaryIs(eu))
	waitKey(t, ctx, euc, key.KeyID, "eu took over", client.PrimaryIs(eu))
	// The new primary rotates; the version reaches every region.
	if _, err := euc.RotateKey(ctx, key.KeyID); err != nil {
		t.Fatalf("rotate at the new primary: %v", err)
	}
	for _, cl := range []*client.Client{euc, c} {
		if k, err := tryWait(ctx, cl, key.KeyID, 20*time.Second, client.VersionActive(3)); err != nil {
			t.Errorf("rotation at the new primary never activates in %s: current %d, v3 %+v, replicas %+v",
				cl.Region(), k.CurrentVersion, version(k, 3), k.Replicas)
		}
	}
}

// TestReview_ReplicateRacingUpdatePrimary: replicate-key to ap reads the
// key ENABLED; update-primary-region to eu commits (ap is not a replica
// yet, so the hand-over lists only us); then the replicate request's
// compare-and-set adds ap to a key being handed over, and its run goes on.
// ap ends up with a replica that no primary keeps: eu never heard of it.
func TestReview_ReplicateRacingUpdatePrimary(t *testing.T) {
	p := lifecyclePartition(t, mrkrepltest.Options{MessageTTL: 3 * time.Second})
	ctx := ctxT(t, 2*time.Minute)
	g := gate(t, ctx, p, us)
	c, euc, apc := p.Region(us).Client, p.Region(eu).Client, p.Region(ap).Client
	key, _ := newReplicatedKey(t, ctx, c, eu)
	waitKey(t, ctx, c, key.KeyID, "eu synced", settledReplicas)

	// The next signature us makes (the init of the replicate request) waits.
	entered, releaseSign := g.holdNextSign(t)
	replicated := make(chan error, 1)
	go func() {
		_, err := c.ReplicateKey(ctx, key.KeyID, ap)
		replicated <- err
	}()
	<-entered
	if _, err := c.UpdatePrimaryRegion(ctx, key.KeyID, eu); err != nil {
		t.Fatalf("update-primary: %v", err)
	}
	releaseSign()
	if err := <-replicated; err == nil {
		t.Errorf("replicate-key to %s was started on a key that is UPDATING; want 409", ap)
	} else if apiCode(err) != api.CodeConflict {
		t.Errorf("replicate-key: %v, want 409", err)
	}
	g.set(func(g *gateHSM) { g.sign = nil })

	waitKey(t, ctx, c, key.KeyID, "us names eu", client.PrimaryIs(eu))
	waitKey(t, ctx, euc, key.KeyID, "eu took over", client.PrimaryIs(eu))
	// Let the run and the announcements finish (several MessageTTLs), then
	// ap's replica, if any, must be one the new primary knows.
	consistent := func() (bool, string) {
		ak, err := apc.DescribeKey(ctx, key.KeyID)
		if client.IsNotFound(err) {
			return true, ""
		}
		if err != nil {
			return false, err.Error()
		}
		ek, err := euc.DescribeKey(ctx, key.KeyID)
		if err != nil {
			return false, err.Error()
		}
		r, ok := replicaOf(ek, ap)
		if ak.PrimaryRegion == eu && ok && r.State == api.ReplicaEnabled && r.SyncedEpoch == ek.Epoch {
			return true, ""
		}
		return false, fmt.Sprintf("ap: primary %s epoch %d versions %v; eu's replicas %+v", ak.PrimaryRegion, ak.Epoch, ak.Versions, ek.Replicas)
	}
	deadline := time.Now().Add(20 * time.Second)
	var why string
	for {
		ok, w := consistent()
		if ok {
			return
		}
		why = w
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond) // poll interval
	}
	t.Errorf("ap holds a replica that no primary keeps in step: %s", why)
}

// TestReview_DeletionScheduledDuringRotationReleasesVersion: version 2 is
// staged, ap confirmed it, eu has not (its HSM is slow to unwrap). eu is
// then scheduled for deletion; LIFECYCLE.md says a replica pending
// deletion does not hold a rotation back, so v2 must become current. The
// primary records eu PENDING_DELETION but never re-checks the staged
// version (tryActivate only runs on a receipt or a DELETED status).
func TestReview_DeletionScheduledDuringRotationReleasesVersion(t *testing.T) {
	p := lifecyclePartition(t, mrkrepltest.Options{})
	ctx := ctxT(t, 2*time.Minute)
	g := gate(t, ctx, p, eu)
	c, euc := p.Region(us).Client, p.Region(eu).Client
	key, _ := newReplicatedKey(t, ctx, c, eu)
	replicated(t, ctx, c, key.KeyID, ap)

	hold, _ := gateChan(t)
	g.set(func(g *gateHSM) { g.unwrap = func(hsmsvc.UnwrapRequest) { <-hold } })
	if _, err := c.RotateKey(ctx, key.KeyID); err != nil {
		t.Fatal(err)
	}
	waitKey(t, ctx, c, key.KeyID, "v2 held by ap", func(k *api.Key) bool { return slices.Contains(version(k, 2).ReplicatedTo, ap) })
	if _, err := euc.ScheduleKeyDeletion(ctx, key.KeyID, 7); err != nil {
		t.Fatal(err)
	}
	waitKey(t, ctx, c, key.KeyID, "eu PENDING_DELETION", func(k *api.Key) bool {
		r, _ := replicaOf(k, eu)
		return r.State == api.ReplicaPendingDeletion
	})
	k, err := tryWait(ctx, c, key.KeyID, 10*time.Second, client.VersionActive(2))
	if err != nil {
		t.Errorf("v2 stays %s waiting for %v after eu was scheduled for deletion (%s); want it current",
			version(k, 2).State, k.Replicas, err)
	}
}

// ---- lost and delayed messages ----------------------------------------

// TestReview_LostDeletionAckLeavesTombstone: ap's replica is deleted; its
// DELETED status reaches the primary, which drops ap and acknowledges with
// a key.sync — that sync is lost. ap keeps its tombstone and resends the
// status every MessageTTL; the primary, having dropped ap already, answers
// it as a duplicate without a sync. The tombstone and the resends never end.
func TestReview_LostDeletionAckLeavesTombstone(t *testing.T) {
	const ttl = 2 * time.Second
	p := lifecyclePartition(t, mrkrepltest.Options{NoProxy: true, MessageTTL: ttl, DeletionWaitingPeriod: time.Second})
	ctx := ctxT(t, 2*time.Minute)
	rl := startRelay(t, p)
	c, apc := p.Region(us).Client, p.Region(ap).Client
	key, _ := newReplicatedKey(t, ctx, c, ap)

	rl.set(func(env *messages.Envelope) []byte {
		if env.Message.Type == messages.TypeSync && env.Message.Dst == ap {
			return nil // every sync to ap is lost
		}
		return env.Raw
	})
	if _, err := apc.ScheduleKeyDeletion(ctx, key.KeyID, 0); err != nil {
		t.Fatal(err)
	}
	waitKey(t, ctx, c, key.KeyID, "ap dropped", func(k *api.Key) bool { _, ok := replicaOf(k, ap); return !ok })
	waitKey(t, ctx, apc, key.KeyID, "ap deleted", func(k *api.Key) bool { return k == nil })
	rl.set(nil) // the network is fine again

	kv := keysBucket(t, ctx, p, ap)
	deadline := time.Now().Add(8 * ttl)
	for {
		_, err := kv.Get(ctx, key.KeyID)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond) // poll interval
	}
	t.Errorf("ap's tombstone of %s is still there %s after the network recovered: the primary answers its resent DELETED status "+
		"without the acknowledging sync, so it is resent every MessageTTL for ever", key.KeyID, 8*ttl)
}

// TestReview_NewReplicaHasThePrimaryEpoch: a key rotated twice before it
// has a replica is at epoch 3. A new replica records no epoch (1 after
// normalisation), while the primary credits it with synced_epoch 3 (the
// run's epoch) and never sends it a sync.
func TestReview_NewReplicaHasThePrimaryEpoch(t *testing.T) {
	p := lifecyclePartition(t, mrkrepltest.Options{})
	ctx := ctxT(t, time.Minute)
	c, euc := p.Region(us).Client, p.Region(eu).Client
	key, err := c.CreateKey(ctx, api.CreateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := c.RotateKey(ctx, key.KeyID); err != nil {
			t.Fatal(err)
		}
	}
	replicated(t, ctx, c, key.KeyID, eu)
	pk := waitKey(t, ctx, c, key.KeyID, "eu ENABLED with every version", settledReplicas)
	r, _ := replicaOf(pk, eu)
	rk, err := tryWait(ctx, euc, key.KeyID, 5*time.Second, func(k *api.Key) bool { return k != nil && k.Epoch == pk.Epoch })
	if err != nil {
		t.Errorf("primary at epoch %d shows eu synced_epoch %d, but eu holds epoch %d (current %d)", pk.Epoch, r.SyncedEpoch, rk.Epoch, rk.CurrentVersion)
	}
}

// TestReview_DelayedSyncRollsBackNewReplica: a consequence of the epoch a
// new replica does not record. eu held the key at epoch 1; a key.sync of
// epoch 2 (current v2) to it is delayed. eu is deleted and created anew
// after a third version became current (epoch 3): it records epoch 1. The
// delayed sync arrives, still valid and signed by the primary: eu takes it
// as newer and makes v2 current again, encrypting with a previous version,
// while the primary shows it synced at epoch 3 and never corrects it.
func TestReview_DelayedSyncRollsBackNewReplica(t *testing.T) {
	p := lifecyclePartition(t, mrkrepltest.Options{NoProxy: true, MessageTTL: time.Minute, DeletionWaitingPeriod: time.Second})
	ctx := ctxT(t, 2*time.Minute)
	rl := startRelay(t, p)
	c, euc := p.Region(us).Client, p.Region(eu).Client
	key, _ := newReplicatedKey(t, ctx, c, eu)

	var held *messages.Envelope
	var mu sync.Mutex
	rl.set(func(env *messages.Envelope) []byte {
		if env.Message.Type == messages.TypeSync && env.Message.Dst == eu && env.Message.Sync.Epoch == 2 {
			mu.Lock()
			defer mu.Unlock()
			if held == nil {
				held = env
				return nil // delayed: delivered by the test later
			}
		}
		return env.Raw
	})
	if _, err := c.RotateKey(ctx, key.KeyID); err != nil {
		t.Fatal(err)
	}
	waitKey(t, ctx, c, key.KeyID, "v2 current", client.VersionActive(2))
	waitFor(t, ctx, func() bool { mu.Lock(); defer mu.Unlock(); return held != nil })
	// eu goes, v3 becomes current without it, eu comes back with v1..v3.
	if _, err := euc.ScheduleKeyDeletion(ctx, key.KeyID, 0); err != nil {
		t.Fatal(err)
	}
	waitKey(t, ctx, c, key.KeyID, "eu dropped", func(k *api.Key) bool { return len(k.Replicas) == 0 })
	if _, err := c.RotateKey(ctx, key.KeyID); err != nil {
		t.Fatal(err)
	}
	replicated(t, ctx, c, key.KeyID, eu)
	pk := waitKey(t, ctx, c, key.KeyID, "eu ENABLED", settledReplicas)
	waitKey(t, ctx, euc, key.KeyID, "eu holds v1..v3, v3 current", func(k *api.Key) bool {
		return k != nil && len(k.Versions) == 3 && k.CurrentVersion == 3
	})

	// The delayed sync arrives (within its validity).
	nc, err := p.Connect(eu, "late")
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	if _, err := js.Publish(ctx, messages.InboxSubject(eu, us, messages.TypeSync), held.Raw); err != nil {
		t.Fatal(err)
	}
	// Let it be handled: eu answers it with a status (sync_digest set).
	waitFor(t, ctx, func() bool {
		rl.mu.Lock()
		defer rl.mu.Unlock()
		for _, e := range rl.seen {
			if e.Message.Type == messages.TypeStatus && e.Message.Src == eu && slices.Equal(e.Message.Status.SyncDigest, held.Digest) {
				return true
			}
		}
		return false
	})
	rk, err := euc.DescribeKey(ctx, key.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := euc.Encrypt(ctx, key.KeyID, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if rk.CurrentVersion != pk.CurrentVersion || ct.Version != pk.CurrentVersion {
		t.Errorf("after a delayed sync eu encrypts with v%d (current %d, epoch %d) while the primary's current is v%d and shows eu synced at epoch %d",
			ct.Version, rk.CurrentVersion, rk.Epoch, pk.CurrentVersion, pk.Replicas[0].SyncedEpoch)
	}
}

// ---- states that never settle -----------------------------------------

// TestReview_HandoverToReplicaPendingDeletion: eu schedules its replica's
// deletion while its status cannot reach the primary yet (proxy down);
// the primary, still seeing eu ENABLED, hands the key over to it. Two
// outcomes, depending on which message the proxy delivers first, both
// wrong:
//
//   - eu takes the hand-over although it is PENDING_DELETION: the deletion
//     the client was told is scheduled silently disappears (no
//     cancellation event), eu's record is left ENABLED with a deletion date;
//   - us answers eu's unprompted status with an ack sync carrying the
//     hand-over's epoch (onStatus ignores that us is UPDATING), eu adopts
//     that epoch with us as primary, and then refuses the hand-over for
//     ever (epoch not newer): us stays UPDATING for good.
func TestReview_HandoverToReplicaPendingDeletion(t *testing.T) {
	p := lifecyclePartition(t, mrkrepltest.Options{MessageTTL: 3 * time.Second})
	ctx := ctxT(t, 2*time.Minute)
	c, euc := p.Region(us).Client, p.Region(eu).Client
	key, _ := newReplicatedKey(t, ctx, c, eu)
	waitKey(t, ctx, c, key.KeyID, "eu synced", settledReplicas)

	p.KillProxy()
	sched, err := euc.ScheduleKeyDeletion(ctx, key.KeyID, 7)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.UpdatePrimaryRegion(ctx, key.KeyID, eu); err != nil {
		t.Fatalf("update-primary (us still sees eu ENABLED): %v", err)
	}
	if err := p.StartProxy(ctx); err != nil {
		t.Fatal(err)
	}
	// Wait (several MessageTTLs) for us to leave UPDATING.
	uk, err := tryWait(ctx, c, key.KeyID, 15*time.Second, func(k *api.Key) bool { return k != nil && k.KeyState != api.KeyStateUpdating })
	ek, eerr := euc.DescribeKey(ctx, key.KeyID)
	if eerr != nil {
		t.Fatalf("eu: %v", eerr)
	}
	if err != nil {
		t.Errorf("us stays UPDATING (pending primary %s) for good: eu is %s %s at epoch %d with primary %s, and refuses every hand-over resent",
			uk.PendingPrimary, ek.Role, ek.KeyState, ek.Epoch, ek.PrimaryRegion)
		return
	}
	if ek.KeyState == api.KeyStatePendingDeletion {
		return // the deletion stands, and the hand-over did not hang
	}
	evs := readEvents(t, ctx, p, eu)
	cancelled := findEvent(evs, api.EventKeyDeletionCancelled, key.KeyID) != nil || findEvent(evs, api.EventReplicaDeletionCancelled, key.KeyID) != nil
	if !cancelled || ek.DeletionDate != nil {
		t.Errorf("eu's deletion scheduled for %s vanished: eu is now %s %s (deletion_date %v), no cancellation event",
			sched.DeletionDate.Format(time.RFC3339), ek.Role, ek.KeyState, ek.DeletionDate)
	}
}

// TestReview_AckSyncLeaksHandoverEpoch: while us hands the key over to eu
// (UPDATING, epoch 2), ap sends an unprompted status (it schedules its
// deletion). onStatus acknowledges it with a sync of us's record — epoch
// 2, primary us — although syncReplicas holds syncs back during a
// hand-over for exactly this reason. ap takes epoch 2 with primary us.
// After the accept, us announces eu at the same epoch 2; ap ignores it
// (not newer) and never learns its new primary: us announces for ever,
// and eu's syncs to ap are refused (not_primary).
func TestReview_AckSyncLeaksHandoverEpoch(t *testing.T) {
	p := lifecyclePartition(t, mrkrepltest.Options{MessageTTL: 3 * time.Second})
	ctx := ctxT(t, 2*time.Minute)
	g := gate(t, ctx, p, eu)
	c, apc := p.Region(us).Client, p.Region(ap).Client
	key, _ := newReplicatedKey(t, ctx, c, eu)
	replicated(t, ctx, c, key.KeyID, ap)
	waitKey(t, ctx, c, key.KeyID, "replicas synced", settledReplicas)

	// eu's next signature (its accept of the hand-over) waits.
	entered, releaseSign := g.holdNextSign(t)
	if _, err := c.UpdatePrimaryRegion(ctx, key.KeyID, eu); err != nil {
		t.Fatal(err)
	}
	<-entered // eu took over and is about to accept
	if _, err := apc.ScheduleKeyDeletion(ctx, key.KeyID, 7); err != nil {
		t.Fatal(err)
	}
	waitKey(t, ctx, c, key.KeyID, "us saw ap's status", func(k *api.Key) bool {
		r, _ := replicaOf(k, ap)
		return r.State == api.ReplicaPendingDeletion
	})
	if k, err := tryWait(ctx, apc, key.KeyID, 2*time.Second, func(k *api.Key) bool { return k != nil && k.Epoch > 1 }); err == nil {
		t.Errorf("during the hand-over ap was sent the hand-over's epoch %d with primary %s (an ack sync from us while UPDATING)", k.Epoch, k.PrimaryRegion)
	}
	releaseSign()
	g.set(func(g *gateHSM) { g.sign = nil })
	waitKey(t, ctx, c, key.KeyID, "us names eu", client.PrimaryIs(eu))
	if k, err := tryWait(ctx, apc, key.KeyID, 15*time.Second, func(k *api.Key) bool { return k != nil && k.PrimaryRegion == eu }); err != nil {
		t.Errorf("ap never learns the new primary: primary %s epoch %d (%v)", k.PrimaryRegion, k.Epoch, err)
	}
}

// TestReview_FailedReplicaBlocksUpdatePrimary: ap's first copy failed (its
// region was down for every attempt), so ap holds nothing. The primary
// refuses update-primary-region to eu "until ap is deleted", but ap
// cannot be deleted (it has no key: 404). While ap's region is down the
// primary can never move, although ap holds no version the new primary
// would need to know about.
func TestReview_FailedReplicaBlocksUpdatePrimary(t *testing.T) {
	p := lifecyclePartition(t, mrkrepltest.Options{RunTimeout: time.Second, MaxAttempts: 1})
	ctx := ctxT(t, time.Minute)
	c, apc := p.Region(us).Client, p.Region(ap).Client
	key, _ := newReplicatedKey(t, ctx, c, eu)
	p.KillWorker(ap)
	if _, err := c.ReplicateKey(ctx, key.KeyID, ap); err != nil {
		t.Fatal(err)
	}
	waitKey(t, ctx, c, key.KeyID, "ap FAILED", func(k *api.Key) bool {
		r, _ := replicaOf(k, ap)
		return r.State == api.ReplicaFailed
	})
	if err := p.StartWorker(ctx, ap); err != nil {
		t.Fatal(err)
	}
	apc = p.Region(ap).Client
	_, delErr := apc.ScheduleKeyDeletion(ctx, key.KeyID, 0)
	_, upErr := c.UpdatePrimaryRegion(ctx, key.KeyID, eu)
	if upErr != nil {
		t.Errorf("update-primary with a replica that failed before holding anything: %v; "+
			"and the advice cannot be followed: schedule-deletion in %s answers %v", upErr, ap, delErr)
	}
}

// ---- regression tests (pass today) ------------------------------------

// TestReview_DuplicateHandoverAfterTakeOverIsAcceptedAgain: the accept of
// a hand-over is lost; the old primary resends the hand-over after
// MessageTTL and the new primary, which took over already, answers with
// the accept again. Both end on eu, each with one PrimaryUpdated event.
func TestReview_DuplicateHandoverAfterTakeOverIsAcceptedAgain(t *testing.T) {
	const ttl = 2 * time.Second
	p := lifecyclePartition(t, mrkrepltest.Options{NoProxy: true, MessageTTL: ttl})
	ctx := ctxT(t, time.Minute)
	rl := startRelay(t, p)
	c, euc := p.Region(us).Client, p.Region(eu).Client
	key, _ := newReplicatedKey(t, ctx, c, eu)
	waitKey(t, ctx, c, key.KeyID, "eu synced", settledReplicas)

	var dropped atomic.Int32
	rl.set(func(env *messages.Envelope) []byte {
		if env.Message.Type == messages.TypeAccept && dropped.Add(1) == 1 {
			return nil // the first accept is lost
		}
		return env.Raw
	})
	if _, err := c.UpdatePrimaryRegion(ctx, key.KeyID, eu); err != nil {
		t.Fatal(err)
	}
	waitKey(t, ctx, euc, key.KeyID, "eu took over", func(k *api.Key) bool { return k != nil && k.Role == api.RolePrimary })
	waitKey(t, ctx, c, key.KeyID, "us names eu", client.PrimaryIs(eu))
	waitKey(t, ctx, euc, key.KeyID, "eu ENABLED", client.PrimaryIs(eu))
	if dropped.Load() < 2 {
		t.Errorf("only %d accept(s) seen; the hand-over was not resent and accepted again", dropped.Load())
	}
	for _, region := range []string{us, eu} {
		n := 0
		for _, ev := range readEvents(t, ctx, p, region) {
			if ev.Type == api.EventPrimaryUpdated && ev.KeyID == key.KeyID {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s: %d PrimaryUpdated events, want 1", region, n)
		}
	}
}

// TestReview_ReorderedStatusesKeepTheLatest: a replica schedules and then
// cancels its deletion; its two unprompted statuses reach the primary in
// the wrong order (the cancel first). The status_seq makes the primary
// keep the later state: ENABLED, not PENDING_DELETION.
func TestReview_ReorderedStatusesKeepTheLatest(t *testing.T) {
	p := lifecyclePartition(t, mrkrepltest.Options{NoProxy: true, MessageTTL: 30 * time.Second})
	ctx := ctxT(t, time.Minute)
	rl := startRelay(t, p)
	c, euc := p.Region(us).Client, p.Region(eu).Client
	key, _ := newReplicatedKey(t, ctx, c, eu)

	var mu sync.Mutex
	var first *messages.Envelope
	rl.set(func(env *messages.Envelope) []byte {
		if env.Message.Type == messages.TypeStatus && env.Message.Src == eu && env.Message.Status.State == messages.ReplicaStatePendingDeletion {
			mu.Lock()
			if first == nil {
				first = env
			}
			mu.Unlock()
			return nil // held back
		}
		return env.Raw
	})
	if _, err := euc.ScheduleKeyDeletion(ctx, key.KeyID, 7); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, func() bool { mu.Lock(); defer mu.Unlock(); return first != nil })
	if _, err := euc.CancelKeyDeletion(ctx, key.KeyID); err != nil {
		t.Fatal(err)
	}
	// The cancel's status (seq 2) passes; wait until eu is acknowledged.
	kv := keysBucket(t, ctx, p, eu)
	waitFor(t, ctx, func() bool {
		e, err := kv.Get(ctx, key.KeyID)
		return err == nil && strings.Contains(string(e.Value()), `"status_acked":2`)
	})
	// Now the held status (seq 1, PENDING_DELETION) arrives.
	nc, err := p.Connect(us, "late")
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	if _, err := js.Publish(ctx, messages.InboxSubject(us, eu, messages.TypeStatus), first.Raw); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, func() bool {
		rl.mu.Lock()
		defer rl.mu.Unlock()
		n := 0
		for _, e := range rl.seen {
			if e.Message.Type == messages.TypeSync && e.Message.Dst == eu {
				n++
			}
		}
		return n >= 2 // the acks of both statuses
	})
	k, err := c.DescribeKey(ctx, key.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := replicaOf(k, eu); r.State != api.ReplicaEnabled || r.DeletionDate != nil {
		t.Errorf("after a stale PENDING_DELETION status the primary shows eu %+v, want ENABLED", r)
	}
}
