package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/nats-io/nats.go/jetstream"
)

// The lifecycle after the first copy (docs/LIFECYCLE.md): staged rotation,
// change of primary region, replica deletion — each end to end, with its
// failure paths.

const (
	us = "us-east-1"
	eu = "eu-west-1"
	ap = "ap-southeast-2"
)

func lifecyclePartition(t *testing.T, o mrkrepltest.Options) *mrkrepltest.Partition {
	if o.SweepInterval == 0 {
		o.SweepInterval = 100 * time.Millisecond
	}
	return mrkrepltest.New(t, o)
}

// ciphertext is one ciphertext and what must come out of it.
type ciphertext struct {
	region    string
	version   uint32
	blob, aad []byte
	plaintext string
}

// encryptEverywhere encrypts in every region and checks the version used.
func encryptEverywhere(t *testing.T, ctx context.Context, p *mrkrepltest.Partition, keyID string, want uint32) []ciphertext {
	t.Helper()
	var out []ciphertext
	for _, r := range p.Regions() {
		pt := fmt.Sprintf("made in %s with v%d", r.Name, want)
		aad := []byte("ctx " + r.Name)
		ct, err := r.Client.Encrypt(ctx, keyID, []byte(pt), aad)
		if err != nil {
			t.Fatalf("encrypt in %s: %v", r.Name, err)
		}
		if ct.Version != want {
			t.Fatalf("encrypt in %s used version %d, want %d", r.Name, ct.Version, want)
		}
		out = append(out, ciphertext{r.Name, ct.Version, ct.CiphertextBlob, aad, pt})
	}
	return out
}

// decryptEverywhere checks that every ciphertext decrypts in every region.
func decryptEverywhere(t *testing.T, ctx context.Context, p *mrkrepltest.Partition, cts []ciphertext) {
	t.Helper()
	for _, ct := range cts {
		for _, r := range p.Regions() {
			got, err := r.Client.Decrypt(ctx, ct.blob, ct.aad)
			if err != nil {
				t.Errorf("v%d ciphertext from %s in %s: %v", ct.version, ct.region, r.Name, err)
				continue
			}
			if string(got.Plaintext) != ct.plaintext || got.Version != ct.version {
				t.Errorf("v%d ciphertext from %s in %s: got %q v%d", ct.version, ct.region, r.Name, got.Plaintext, got.Version)
			}
		}
	}
}

// waitKey polls describe-key in c's region until cond holds.
func waitKey(t *testing.T, ctx context.Context, c *client.Client, keyID string, what string, cond func(*api.Key) bool) *api.Key {
	t.Helper()
	k, err := c.WaitKey(ctx, keyID, cond)
	if err != nil {
		t.Fatalf("%s: waiting in %s for %s: %v (last seen %+v)", keyID, c.Region(), what, err, k)
	}
	return k
}

func apiCode(err error) string {
	var e *client.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

func version(k *api.Key, v uint32) api.KeyVersion {
	for _, d := range k.VersionDetails {
		if d.Version == v {
			return d
		}
	}
	return api.KeyVersion{}
}

// TestRotationStagedThenActivated: a new version is copied to every
// replica before anyone encrypts with it; then every region encrypts with
// it, and ciphertext of both versions decrypts everywhere.
func TestRotationStagedThenActivated(t *testing.T) {
	p := lifecyclePartition(t, mrkrepltest.Options{})
	ctx := ctxT(t, time.Minute)
	c := p.Region(us).Client
	key, _ := newReplicatedKey(t, ctx, c, eu)
	replicated(t, ctx, c, key.KeyID, ap)
	before := encryptEverywhere(t, ctx, p, key.KeyID, 1)

	// Rotated by the partition's admin: the event names the principal the
	// server proved, not the application that made the key.
	adminNC, err := p.Connect(us, "admin")
	if err != nil {
		t.Fatal(err)
	}
	defer adminNC.Close()
	rotated, err := client.New(adminNC, us).RotateKey(ctx, key.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rotated.Versions, []uint32{1, 2}) {
		t.Fatalf("after rotate: versions %v", rotated.Versions)
	}
	for _, r := range p.Regions() {
		waitKey(t, ctx, r.Client, key.KeyID, "version 2 current", client.VersionActive(2))
	}
	k, err := c.DescribeKey(ctx, key.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	v1, v2 := version(k, 1), version(k, 2)
	if v2.State != api.VersionCurrent || v1.State != api.VersionPrevious || v2.ActivatedAt == nil {
		t.Errorf("version states: v1 %+v v2 %+v", v1, v2)
	}
	if want := []string{ap, eu, us}; !slices.Equal(v2.ReplicatedTo, want) || !slices.Equal(v1.ReplicatedTo, want) {
		t.Errorf("replicated-to: v1 %v v2 %v, want %v", v1.ReplicatedTo, v2.ReplicatedTo, want)
	}
	if k.Epoch != 2 {
		t.Errorf("primary epoch %d, want 2", k.Epoch)
	}
	for _, name := range []string{eu, ap} {
		rk := waitKey(t, ctx, p.Region(name).Client, key.KeyID, "epoch 2", func(k *api.Key) bool { return k != nil && k.Epoch == 2 })
		if !slices.Equal(rk.Versions, []uint32{1, 2}) || rk.CurrentVersion != 2 {
			t.Errorf("%s: versions %v current %d", name, rk.Versions, rk.CurrentVersion)
		}
	}
	after := encryptEverywhere(t, ctx, p, key.KeyID, 2)
	decryptEverywhere(t, ctx, p, append(before, after...))

	// The audit trail: staged by the admin, copied by runs, activated.
	evs := readEvents(t, ctx, p, us)
	staged := findEvent(evs, api.EventVersionStaged, key.KeyID)
	if staged == nil || staged.Actor != mrkrepltest.AdminPrincipal || staged.Version != 2 {
		t.Errorf("VersionStaged event %+v, want actor %s version 2", staged, mrkrepltest.AdminPrincipal)
	}
	if ev := findEvent(evs, api.EventVersionActivated, key.KeyID); ev == nil || ev.Version != 2 {
		t.Errorf("VersionActivated event in %s: %+v", us, ev)
	}
	euEvents := readEvents(t, ctx, p, eu)
	if ev := findEvent(euEvents, api.EventVersionActivated, key.KeyID); ev == nil || ev.Actor != "region:"+us {
		t.Errorf("VersionActivated event in %s: %+v, want actor region:%s", eu, ev, us)
	}
	if ev := findEvent(euEvents, api.EventReplicaCreated, key.KeyID); ev == nil || ev.Version != 1 {
		t.Errorf("ReplicaCreated event in %s: %+v, want version 1", eu, ev)
	}
	if ev := findEvent(euEvents, api.EventVersionReplicated, key.KeyID); ev == nil || ev.Version != 2 {
		t.Errorf("VersionReplicated event in %s: %+v, want version 2", eu, ev)
	}

	// One rotation at a time is not a limit here (v2 is current), and a
	// replica cannot rotate.
	if _, err := p.Region(eu).Client.RotateKey(ctx, key.KeyID); apiCode(err) != api.CodeBadRequest || !strings.Contains(err.Error(), "primary region is "+us) {
		t.Errorf("rotate in a replica region: %v, want 400 naming the primary", err)
	}
}

// TestRotationWaitsForADownRegion: while a replica's worker is down the new
// version stays STAGED (and unused) everywhere; a second rotation is
// refused; when the region returns, the version becomes current.
func TestRotationWaitsForADownRegion(t *testing.T) {
	p := lifecyclePartition(t, mrkrepltest.Options{})
	ctx := ctxT(t, time.Minute)
	c := p.Region(us).Client
	key, _ := newReplicatedKey(t, ctx, c, eu)
	replicated(t, ctx, c, key.KeyID, ap)

	p.KillWorker(eu)
	if _, err := c.RotateKey(ctx, key.KeyID); err != nil {
		t.Fatal(err)
	}
	// ap confirms v2; eu cannot.
	k := waitKey(t, ctx, c, key.KeyID, "v2 held by ap", func(k *api.Key) bool {
		return slices.Contains(version(k, 2).ReplicatedTo, ap)
	})
	if v2 := version(k, 2); v2.State != api.VersionStaged || slices.Contains(v2.ReplicatedTo, eu) || k.CurrentVersion != 1 {
		t.Fatalf("with eu down: current %d, v2 %+v; want v2 STAGED without eu", k.CurrentVersion, v2)
	}
	if _, err := c.RotateKey(ctx, key.KeyID); apiCode(err) != api.CodeConflict || !strings.Contains(err.Error(), eu) {
		t.Errorf("second rotation while v2 is staged: %v, want 409 naming %s", err, eu)
	}
	// Nobody encrypts with the staged version.
	for _, name := range []string{us, ap} {
		ct, err := p.Region(name).Client.Encrypt(ctx, key.KeyID, []byte("x"), nil)
		if err != nil || ct.Version != 1 {
			t.Errorf("encrypt in %s while v2 staged: %v version %d, want 1", name, err, ct.Version)
		}
	}
	if rk, err := p.Region(ap).Client.DescribeKey(ctx, key.KeyID); err != nil || rk.CurrentVersion != 1 || !slices.Contains(rk.Versions, 2) {
		t.Errorf("ap while v2 staged: %v %+v; want v2 held, v1 current", err, rk)
	}

	if err := p.StartWorker(ctx, eu); err != nil {
		t.Fatal(err)
	}
	for _, r := range p.Regions() {
		waitKey(t, ctx, r.Client, key.KeyID, "version 2 current", client.VersionActive(2))
	}
	decryptEverywhere(t, ctx, p, encryptEverywhere(t, ctx, p, key.KeyID, 2))
}

// TestNewReplicaGetsEveryVersion: a key rotated twice before it has any
// replica reaches a new region with all three versions.
func TestNewReplicaGetsEveryVersion(t *testing.T) {
	p := lifecyclePartition(t, mrkrepltest.Options{})
	ctx := ctxT(t, time.Minute)
	c := p.Region(us).Client
	key, err := c.CreateKey(ctx, api.CreateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var cts []ciphertext
	for v := uint32(1); v <= 3; v++ {
		if v > 1 {
			k, err := c.RotateKey(ctx, key.KeyID)
			if err != nil {
				t.Fatal(err)
			}
			if k.CurrentVersion != v {
				t.Fatalf("without replicas a rotation is current at once: current %d, want %d", k.CurrentVersion, v)
			}
		}
		ct, err := c.Encrypt(ctx, key.KeyID, []byte(fmt.Sprint("v", v)), nil)
		if err != nil || ct.Version != v {
			t.Fatalf("encrypt: %v %+v", err, ct)
		}
		cts = append(cts, ciphertext{us, v, ct.CiphertextBlob, nil, fmt.Sprint("v", v)})
	}
	if _, err := c.ReplicateKey(ctx, key.KeyID, eu); err != nil {
		t.Fatal(err)
	}
	waitKey(t, ctx, c, key.KeyID, "eu ENABLED", func(k *api.Key) bool {
		return len(k.Replicas) == 1 && k.Replicas[0].State == api.ReplicaEnabled
	})
	rk, err := p.Region(eu).Client.DescribeKey(ctx, key.KeyID)
	if err != nil || !slices.Equal(rk.Versions, []uint32{1, 2, 3}) || rk.CurrentVersion != 3 {
		t.Fatalf("new replica: %v versions %v current %d; want 1,2,3 current 3", err, rk.Versions, rk.CurrentVersion)
	}
	for _, ct := range cts {
		got, err := p.Region(eu).Client.Decrypt(ctx, ct.blob, nil)
		if err != nil || string(got.Plaintext) != ct.plaintext {
			t.Errorf("v%d in eu: %v", ct.version, err)
		}
	}
	// Asking again answers with the replica, starts nothing.
	again, err := c.ReplicateKey(ctx, key.KeyID, eu)
	if err != nil || again.State != api.StateCompleted {
		t.Errorf("replicate to an ENABLED replica: %v %+v", err, again)
	}
}

// TestUpdatePrimaryRegion: a signed hand-over moves the primary to eu;
// every region follows; afterwards only eu accepts shared changes.
func TestUpdatePrimaryRegion(t *testing.T) {
	p := lifecyclePartition(t, mrkrepltest.Options{})
	ctx := ctxT(t, time.Minute)
	c := p.Region(us).Client
	key, _ := newReplicatedKey(t, ctx, c, eu)

	// Refused: a region without a replica, the primary itself, a replica.
	if _, err := c.UpdatePrimaryRegion(ctx, key.KeyID, ap); apiCode(err) != api.CodeBadRequest || !strings.Contains(err.Error(), "no replica in "+ap) {
		t.Errorf("update primary to a region without a replica: %v, want 400", err)
	}
	if _, err := p.Region(eu).Client.UpdatePrimaryRegion(ctx, key.KeyID, eu); apiCode(err) != api.CodeBadRequest {
		t.Errorf("update primary asked of a replica: %v, want 400", err)
	}
	replicated(t, ctx, c, key.KeyID, ap)
	before := encryptEverywhere(t, ctx, p, key.KeyID, 1)

	k, err := c.UpdatePrimaryRegion(ctx, key.KeyID, eu)
	if err != nil {
		t.Fatal(err)
	}
	if k.KeyState != api.KeyStateUpdating || k.PendingPrimary != eu {
		t.Errorf("right after update-primary: state %s pending %q, want UPDATING to %s", k.KeyState, k.PendingPrimary, eu)
	}
	for _, r := range p.Regions() {
		waitKey(t, ctx, r.Client, key.KeyID, "primary "+eu, client.PrimaryIs(eu))
	}
	newPrimary, err := p.Region(eu).Client.DescribeKey(ctx, key.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	if newPrimary.Role != api.RolePrimary || newPrimary.KeyState != api.KeyStateEnabled || len(newPrimary.Replicas) != 2 {
		t.Fatalf("new primary: role %s state %s replicas %+v", newPrimary.Role, newPrimary.KeyState, newPrimary.Replicas)
	}
	waitKey(t, ctx, p.Region(eu).Client, key.KeyID, "replicas ENABLED and synced", func(k *api.Key) bool {
		for _, r := range k.Replicas {
			if r.State != api.ReplicaEnabled || r.SyncedEpoch != k.Epoch {
				return false
			}
		}
		return true
	})
	old, err := c.DescribeKey(ctx, key.KeyID)
	if err != nil || old.Role != api.RoleReplica || old.PrimaryRegion != eu {
		t.Fatalf("old primary: %v %+v", err, old)
	}
	// Only the new primary accepts shared-property changes.
	if _, err := c.RotateKey(ctx, key.KeyID); apiCode(err) != api.CodeBadRequest {
		t.Errorf("rotate at the old primary: %v, want 400", err)
	}
	if _, err := c.UpdatePrimaryRegion(ctx, key.KeyID, us); apiCode(err) != api.CodeBadRequest {
		t.Errorf("update-primary at the old primary: %v, want 400", err)
	}
	if _, err := p.Region(eu).Client.RotateKey(ctx, key.KeyID); err != nil {
		t.Fatal(err)
	}
	for _, r := range p.Regions() {
		waitKey(t, ctx, r.Client, key.KeyID, "version 2 current", client.VersionActive(2))
	}
	decryptEverywhere(t, ctx, p, append(before, encryptEverywhere(t, ctx, p, key.KeyID, 2)...))
	for _, region := range []string{us, eu} {
		if ev := findEvent(readEvents(t, ctx, p, region), api.EventPrimaryUpdated, key.KeyID); ev == nil {
			t.Errorf("no PrimaryUpdated event in %s", region)
		}
	}
}

// TestReplicaDeletion: schedule, cancel, delete after the waiting period;
// the primary follows each step, a deleted replica stops holding back a
// rotation, and replicating again restores it with every version.
func TestReplicaDeletion(t *testing.T) {
	p := lifecyclePartition(t, mrkrepltest.Options{DeletionWaitingPeriod: time.Second})
	ctx := ctxT(t, time.Minute)
	c := p.Region(us).Client
	euc, apc := p.Region(eu).Client, p.Region(ap).Client
	key, _ := newReplicatedKey(t, ctx, c, eu)
	replicated(t, ctx, c, key.KeyID, ap)
	v1 := encryptEverywhere(t, ctx, p, key.KeyID, 1)

	if _, err := c.ScheduleKeyDeletion(ctx, key.KeyID, 0); apiCode(err) != api.CodeConflict || !strings.Contains(err.Error(), "replicas") {
		t.Errorf("delete a primary with replicas: %v, want 409", err)
	}
	if _, err := euc.CancelKeyDeletion(ctx, key.KeyID); apiCode(err) != api.CodeConflict {
		t.Errorf("cancel with nothing scheduled: %v, want 409", err)
	}
	if _, err := euc.ScheduleKeyDeletion(ctx, key.KeyID, 31); apiCode(err) != api.CodeBadRequest {
		t.Errorf("pending window of 31 days: %v, want 400", err)
	}

	// Schedule (7 days) and cancel in eu; the primary follows.
	k, err := euc.ScheduleKeyDeletion(ctx, key.KeyID, 7)
	if err != nil {
		t.Fatal(err)
	}
	if k.KeyState != api.KeyStatePendingDeletion || k.DeletionDate == nil || time.Until(*k.DeletionDate) < 6*24*time.Hour {
		t.Fatalf("scheduled: %+v", k)
	}
	if _, err := euc.Encrypt(ctx, key.KeyID, []byte("x"), nil); apiCode(err) != api.CodeConflict {
		t.Errorf("encrypt while pending deletion: %v, want 409", err)
	}
	replicaIs := func(region, state string) func(*api.Key) bool {
		return func(k *api.Key) bool {
			for _, r := range k.Replicas {
				if r.Region == region {
					return r.State == state
				}
			}
			return state == ""
		}
	}
	waitKey(t, ctx, c, key.KeyID, "eu PENDING_DELETION", replicaIs(eu, api.ReplicaPendingDeletion))
	if _, err := euc.CancelKeyDeletion(ctx, key.KeyID); err != nil {
		t.Fatal(err)
	}
	waitKey(t, ctx, c, key.KeyID, "eu ENABLED again", replicaIs(eu, api.ReplicaEnabled))
	if _, err := euc.Encrypt(ctx, key.KeyID, []byte("x"), nil); err != nil {
		t.Errorf("encrypt after cancel: %v", err)
	}

	// Delete ap (1 s waiting period): it goes, the primary drops it.
	if _, err := apc.ScheduleKeyDeletion(ctx, key.KeyID, 0); err != nil {
		t.Fatal(err)
	}
	waitKey(t, ctx, apc, key.KeyID, "gone from ap", func(k *api.Key) bool { return k == nil })
	waitKey(t, ctx, c, key.KeyID, "ap dropped", replicaIs(ap, ""))
	if _, err := apc.Decrypt(ctx, v1[0].blob, v1[0].aad); !client.IsNotFound(err) {
		t.Errorf("decrypt in ap after deletion: %v, want 404", err)
	}
	// A rotation now waits only for eu.
	if _, err := c.RotateKey(ctx, key.KeyID); err != nil {
		t.Fatal(err)
	}
	waitKey(t, ctx, c, key.KeyID, "v2 current", client.VersionActive(2))
	// Replicating again restores ap with both versions.
	if _, err := c.ReplicateKey(ctx, key.KeyID, ap); err != nil {
		t.Fatal(err)
	}
	waitKey(t, ctx, c, key.KeyID, "ap ENABLED", replicaIs(ap, api.ReplicaEnabled))
	rk := waitKey(t, ctx, apc, key.KeyID, "ap restored", func(k *api.Key) bool { return k != nil && len(k.Versions) == 2 })
	if rk.CurrentVersion != 2 {
		t.Errorf("restored ap: current %d, want 2", rk.CurrentVersion)
	}
	decryptEverywhere(t, ctx, p, append(v1, encryptEverywhere(t, ctx, p, key.KeyID, 2)...))

	// Delete every replica, then the primary itself.
	for _, rc := range []*client.Client{euc, apc} {
		if _, err := rc.ScheduleKeyDeletion(ctx, key.KeyID, 0); err != nil {
			t.Fatal(err)
		}
	}
	waitKey(t, ctx, c, key.KeyID, "no replicas", func(k *api.Key) bool { return len(k.Replicas) == 0 })
	if _, err := c.ScheduleKeyDeletion(ctx, key.KeyID, 0); err != nil {
		t.Fatalf("delete the primary without replicas: %v", err)
	}
	waitKey(t, ctx, c, key.KeyID, "primary gone", func(k *api.Key) bool { return k == nil })
	evs := readEvents(t, ctx, p, us)
	for _, typ := range []string{api.EventReplicaDeletionScheduled, api.EventReplicaDeletionCancelled, api.EventReplicaDeleted, api.EventKeyDeletionScheduled, api.EventKeyDeleted} {
		if findEvent(evs, typ, key.KeyID) == nil {
			t.Errorf("no %s event in %s", typ, us)
		}
	}
}

// readEvents returns every audit event of region so far.
func readEvents(t *testing.T, ctx context.Context, p *mrkrepltest.Partition, region string) []api.Event {
	t.Helper()
	nc, err := p.Connect(region, "events-reader")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, layout.EventsStream(region))
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var evs []api.Event
	for range info.State.Msgs {
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatalf("events of %s: %v", region, err)
		}
		var ev api.Event
		if err := json.Unmarshal(msg.Data(), &ev); err != nil {
			t.Fatalf("event %s: %v", msg.Data(), err)
		}
		evs = append(evs, ev)
	}
	return evs
}

func findEvent(evs []api.Event, typ, keyID string) *api.Event {
	for i := range evs {
		if evs[i].Type == typ && evs[i].KeyID == keyID {
			return &evs[i]
		}
	}
	return nil
}

// TestAdversarialLifecycle: lifecycle messages correctly signed by a real
// region of the partition, but not one the key's state lets speak, are
// refused with a reason and change nothing: a replica claiming the primary
// role, a hand-over from a region that is not the primary, a sync naming
// the receiver as primary, an accept without a hand-over, a status from a
// region without a replica.
func TestAdversarialLifecycle(t *testing.T) {
	p := lifecyclePartition(t, mrkrepltest.Options{})
	ctx := ctxT(t, time.Minute)
	c := p.Region(us).Client
	key, _ := newReplicatedKey(t, ctx, c, eu)
	seal := func(src, dst string, fill func(*messages.Message)) []byte {
		now := time.Now()
		m := &messages.Message{Header: messages.Header{
			V: 1, MsgID: messages.NewID(), ReplicationID: messages.NewID(), Partition: p.Bundle.Partition(),
			Src: src, Dst: dst, SentAt: now.UnixMilli(), ExpiresAt: now.Add(time.Minute).UnixMilli(),
		}}
		fill(m)
		raw, err := messages.Seal(m, p.Region(src).HSM.Signer())
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	sync := func(primary string) func(*messages.Message) {
		return func(m *messages.Message) {
			m.Type = messages.TypeSync
			m.Sync = &messages.Sync{KeyID: key.KeyID, Epoch: 99, PrimaryRegion: primary, CurrentVersion: 1, Versions: []uint32{1}}
		}
	}
	attacks := []struct {
		name, src, dst string
		typ            messages.Type
		raw            []byte
		reason         string
	}{
		{"replica claims the primary role", ap, eu, messages.TypeSync, seal(ap, eu, sync(ap)), "not_primary"},
		{"sync names the receiver primary", us, eu, messages.TypeSync, seal(us, eu, sync(eu)), "state_mismatch"},
		{"hand-over from a non-primary", ap, eu, messages.TypeHandover, seal(ap, eu, func(m *messages.Message) {
			m.Type = messages.TypeHandover
			m.Handover = &messages.Handover{KeyID: key.KeyID, Epoch: 99, CurrentVersion: 1, Versions: []uint32{1}, Replicas: []string{ap, us}}
		}), "not_primary"},
		{"accept without a hand-over", eu, us, messages.TypeAccept, seal(eu, us, func(m *messages.Message) {
			m.Type = messages.TypeAccept
			m.Accept = &messages.Accept{HandoverDigest: make([]byte, messages.DigestSize), KeyID: key.KeyID, Epoch: 2}
		}), "state_mismatch"},
		{"status from a region without a replica", ap, us, messages.TypeStatus, seal(ap, us, func(m *messages.Message) {
			m.Type = messages.TypeStatus
			m.Status = &messages.Status{KeyID: key.KeyID, Epoch: 1, PrimaryRegion: us, StatusSeq: 1, State: messages.ReplicaStateEnabled, Versions: []uint32{1}}
		}), "wrong_peer"},
	}
	want := map[string][]string{}
	for _, a := range attacks {
		nc, err := p.Connect(a.dst, "attacker")
		if err != nil {
			t.Fatal(err)
		}
		js, _ := jetstream.New(nc)
		if _, err := js.Publish(ctx, messages.InboxSubject(a.dst, a.src, a.typ), a.raw); err != nil {
			t.Fatalf("%s: %v", a.name, err)
		}
		nc.Close()
		want[a.dst] = append(want[a.dst], a.reason)
	}
	for region, reasons := range want {
		nc, err := p.Connect(region, "reader")
		if err != nil {
			t.Fatal(err)
		}
		got := deadLetters(t, ctx, nc, layout.DLQStream(region), len(reasons))
		nc.Close()
		slices.Sort(got)
		slices.Sort(reasons)
		if !slices.Equal(got, reasons) {
			t.Errorf("%s dead letters %v, want %v", region, got, reasons)
		}
	}
	for _, region := range []string{us, eu} {
		k, err := p.Region(region).Client.DescribeKey(ctx, key.KeyID)
		if err != nil || k.PrimaryRegion != us || k.Epoch != 1 || k.KeyState != api.KeyStateEnabled {
			t.Errorf("%s after the attacks: %v %+v", region, err, k)
		}
	}
	if _, err := p.Region(ap).Client.DescribeKey(ctx, key.KeyID); !client.IsNotFound(err) {
		t.Errorf("ap holds the key after the attacks: %v", err)
	}
}

// TestRotationDoesNotWaitForAReplicaPendingDeletion: a replica scheduled
// for deletion does not hold a rotation back; if its deletion is cancelled
// it receives the new version and is ENABLED again.
func TestRotationDoesNotWaitForAReplicaPendingDeletion(t *testing.T) {
	p := lifecyclePartition(t, mrkrepltest.Options{})
	ctx := ctxT(t, time.Minute)
	c, euc := p.Region(us).Client, p.Region(eu).Client
	key, _ := newReplicatedKey(t, ctx, c, eu)
	if _, err := euc.ScheduleKeyDeletion(ctx, key.KeyID, 7); err != nil {
		t.Fatal(err)
	}
	waitKey(t, ctx, c, key.KeyID, "eu PENDING_DELETION", func(k *api.Key) bool {
		return len(k.Replicas) == 1 && k.Replicas[0].State == api.ReplicaPendingDeletion
	})
	if _, err := c.RotateKey(ctx, key.KeyID); err != nil {
		t.Fatal(err)
	}
	k := waitKey(t, ctx, c, key.KeyID, "v2 current without eu", client.VersionActive(2))
	if slices.Contains(version(k, 2).ReplicatedTo, eu) {
		t.Errorf("v2 was copied to a replica pending deletion: %v", version(k, 2).ReplicatedTo)
	}
	if _, err := euc.CancelKeyDeletion(ctx, key.KeyID); err != nil {
		t.Fatal(err)
	}
	waitKey(t, ctx, c, key.KeyID, "eu ENABLED with v2", func(k *api.Key) bool {
		return len(k.Replicas) == 1 && k.Replicas[0].State == api.ReplicaEnabled && slices.Contains(version(k, 2).ReplicatedTo, eu)
	})
	waitKey(t, ctx, euc, key.KeyID, "eu encrypts with v2", client.VersionActive(2))
	ct, err := euc.Encrypt(ctx, key.KeyID, []byte("back"), nil)
	if err != nil || ct.Version != 2 {
		t.Fatalf("encrypt in eu after the cancel: %v %+v", err, ct)
	}
	if pt, err := c.Decrypt(ctx, ct.CiphertextBlob, nil); err != nil || string(pt.Plaintext) != "back" {
		t.Errorf("eu's v2 ciphertext in us: %v", err)
	}
}
