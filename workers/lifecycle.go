package workers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// This file is the key lifecycle after the first copy (docs/LIFECYCLE.md):
// rotation, change of primary region, deletion, and the two messages that
// keep replicas in step with their primary:
//
//	primary                                  replica
//	syncReplicas   ──key.sync (epoch, primary, current version)──▶ onSync
//	onStatus       ◀──key.status (epoch held, state, versions)────
//
// A status answers every sync; a replica also sends one unprompted when
// its own state changes (deletion scheduled, cancelled, done; new primary),
// and the primary acknowledges that with a sync. Both sides resend what was
// not acknowledged after MessageTTL: the sweeper finds such keys through a
// "lc.<key id>" entry in the PENDING index.
//
// Changing the primary region is a signed hand-over:
//
//	old primary A                      new primary B
//	UPDATING ──primary.handover──▶ onHandover: PRIMARY, UPDATING
//	onAccept ◀──primary.accept───
//	REPLICA of B ──key.status──▶ onStatus: ENABLED (hand-over done)
//	A tells the other replicas (key.sync with primary B): a replica takes a
//	new primary only from the one it has.

// lcPrefix marks a key's entry in the PENDING index.
const lcPrefix = "lc."

// markKeyPending records that keyID has lifecycle work the sweeper must
// check (resends, deletion date).
func (w *Worker) markKeyPending(ctx context.Context, keyID string) error {
	return w.markPending(ctx, lcPrefix+keyID)
}

type actorKey struct{}

// withActor records who caused what ctx is used for, for audit events.
func withActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

func actorFrom(ctx context.Context) string {
	if a, ok := ctx.Value(actorKey{}).(string); ok {
		return a
	}
	return "worker"
}

func allRegions(k *api.Key) []string {
	rs := []string{k.PrimaryRegion}
	for _, r := range k.Replicas {
		rs = append(rs, r.Region)
	}
	slices.Sort(rs)
	return rs
}

// sendSigned signs m and publishes it to the outbox (for lifecycle
// messages, which are not stored: a lost one is sent again, fresh).
func (w *Worker) sendSigned(ctx context.Context, m *messages.Message) error {
	raw, _, err := w.sign(m)
	if err != nil {
		return err
	}
	return w.publishSigned(ctx, m, raw)
}

// publishSigned publishes m, signed as raw, to the outbox.
func (w *Worker) publishSigned(ctx context.Context, m *messages.Message, raw []byte) error {
	msg := nats.NewMsg(messages.OutboxSubject(w.cfg.Region, m.Dst, m.Type))
	msg.Data = raw
	if _, err := w.js.PublishMsg(ctx, msg, jetstream.WithMsgID(layout.MsgID(raw))); err != nil {
		return fmt.Errorf("publish %s to %s: %w", m.Type, m.Dst, err)
	}
	return nil
}

// sendSync sends k's shared state, as this region holds it, to dst.
func (w *Worker) sendSync(ctx context.Context, k *keyRecord, dst string, ack uint64) error {
	m := w.newMessage(messages.TypeSync, messages.NewID(), dst)
	m.Sync = &messages.Sync{
		KeyID: k.KeyID, Epoch: k.Epoch, PrimaryRegion: k.PrimaryRegion, CurrentVersion: k.CurrentVersion,
		Versions: slices.Clone(k.Versions), Description: k.Description, AckStatusSeq: ack,
	}
	return w.sendSigned(ctx, m)
}

// sendStatus sends this replica's state to dst: in answer to the sync
// with syncDigest, or unprompted (syncDigest nil).
func (w *Worker) sendStatus(ctx context.Context, k *keyRecord, dst string, syncDigest []byte) error {
	m := w.newMessage(messages.TypeStatus, messages.NewID(), dst)
	st := &messages.Status{
		KeyID: k.KeyID, Epoch: k.Epoch, PrimaryRegion: k.PrimaryRegion, StatusSeq: k.StatusSeq,
		State: messages.ReplicaStateEnabled, Versions: slices.Clone(k.Versions), SyncDigest: syncDigest,
	}
	switch {
	case k.Deleted:
		st.State, st.Versions = messages.ReplicaStateDeleted, nil
	case k.KeyState == api.KeyStatePendingDeletion && k.DeletionDate != nil:
		st.State, st.DeletionDate = messages.ReplicaStatePendingDeletion, k.DeletionDate.UnixMilli()
	}
	m.Status = st
	return w.sendSigned(ctx, m)
}

// syncReplicas sends key.sync to every replica that has not confirmed the
// key's epoch and was not sent one within MessageTTL.
func (w *Worker) syncReplicas(ctx context.Context, keyID string) {
	if err := w.markKeyPending(ctx, keyID); err != nil {
		w.log.Warn("pending index not written", "key_id", keyID, "err", err)
	}
	var due []string
	key, err := w.updateKey(ctx, keyID, func(k *keyRecord) error {
		due = nil
		if k.Role != api.RolePrimary || k.PendingPrimary != "" {
			// Not the primary, or handing over: the epoch of a hand-over
			// is announced with the new primary's name, after the accept.
			return errNoChange
		}
		now := w.cfg.Now()
		for _, r := range k.Replicas {
			last := k.SyncSent[r.Region]
			if needsSync(&k.Key, r) && (last.Epoch < k.Epoch || now.Sub(last.At) >= w.cfg.MessageTTL) {
				due = append(due, r.Region)
			}
		}
		if len(due) == 0 {
			return errNoChange
		}
		if k.SyncSent == nil {
			k.SyncSent = map[string]syncSent{}
		}
		for _, r := range due {
			k.SyncSent[r] = syncSent{Epoch: k.Epoch, At: now}
		}
		return nil
	})
	if err != nil {
		w.log.Warn("sync not sent; the sweeper will", "key_id", keyID, "err", err)
		return
	}
	for _, dst := range due {
		r, _ := findReplica(&key.Key, dst)
		if err := w.sendSync(ctx, key, dst, r.StatusSeq); err != nil {
			w.log.Warn("sync not sent; the sweeper will", "key_id", keyID, "dst", dst, "err", err)
		}
	}
}

// ---- rotation ---------------------------------------------------------

func (w *Worker) apiRotateKey(ctx context.Context, data []byte) (any, error) {
	var req api.RotateKeyRequest
	if err := decodeKeyRequest(data, &req, &req.KeyID); err != nil {
		return nil, err
	}
	// Written before the change it stands for, like every lifecycle
	// duty: the sweeper then finishes what a crash cuts short.
	if err := w.markKeyPending(ctx, req.KeyID); err != nil {
		return nil, err
	}
	// Reserve the version number first (compare-and-set), so that two
	// rotations never generate the same version: the HSM object of a
	// reserved number is this request's alone, until the reservation is
	// old enough to be a crash's leftover (reservationTimeout).
	now := w.cfg.Now().UTC()
	var next uint32
	k, err := w.updateLiveKey(ctx, req.KeyID, func(k *keyRecord) error {
		if err := w.canChangeShared(k); err != nil {
			return err
		}
		if s := stagedVersion(&k.Key); s != 0 {
			return conflict("key %s: version %d is still staged, waiting for %s", k.KeyID, s, strings.Join(waitingFor(&k.Key, s), ", "))
		}
		if k.Reserved != 0 && now.Sub(k.ReservedAt) < reservationTimeout {
			return conflict("key %s is being rotated by another request", k.KeyID)
		}
		if len(k.Versions) >= messages.MaxVersions {
			// key.sync, key.status and a hand-over list every version:
			// one more would not Seal (review L2).
			return conflict("key %s has %d versions, the most a key may have", k.KeyID, messages.MaxVersions)
		}
		next = slices.Max(k.Versions) + 1
		k.Reserved, k.ReservedAt = next, now
		return nil
	})
	if err != nil {
		return nil, err
	}
	ref := hsmsvc.KeyRef{KeyID: k.KeyID, Version: next}
	err = w.hsmOp("generate_key", func() error {
		err := w.cfg.HSM.GenerateKey(ctx, ref)
		if errors.Is(err, hsmsvc.ErrExists) {
			// Left by a rotation that reserved this number and crashed
			// before recording it: never recorded, so never used.
			if err = w.cfg.HSM.DestroyKey(ctx, ref); err == nil {
				err = w.cfg.HSM.GenerateKey(ctx, ref)
			}
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("generate version %d: %w", next, err)
	}
	var activated uint32
	key, err := w.updateKey(ctx, k.KeyID, func(k *keyRecord) error {
		if k.Reserved != next || slices.Contains(k.Versions, next) {
			return conflict("key %s: the rotation to version %d was taken over meanwhile", k.KeyID, next)
		}
		if err := w.canChangeShared(k); err != nil {
			return err
		}
		k.Reserved, k.ReservedAt = 0, time.Time{}
		k.Versions = addVersion(k.Versions, next)
		k.VersionDetails = append(k.VersionDetails, api.KeyVersion{
			Version: next, State: api.VersionStaged, ReplicatedTo: []string{w.cfg.Region}, CreatedAt: now,
		})
		k.UpdatedAt = now
		activated = tryActivate(&k.Key, now) // at once if no replica holds the key
		return nil
	})
	if err != nil {
		// Not recorded (the key changed state meanwhile, say a hand-over
		// began): the material must not outlive the reservation, or a
		// later version of the same number would meet it in this HSM.
		if derr := w.cfg.HSM.DestroyKey(ctx, ref); derr != nil && !errors.Is(derr, hsmsvc.ErrNotFound) {
			w.log.Warn("unrecorded version not destroyed; the next rotation replaces it", "key_id", req.KeyID, "version", next, "err", derr)
		}
		_, _ = w.updateKey(ctx, req.KeyID, func(k *keyRecord) error {
			if k.Reserved != next {
				return errNoChange
			}
			k.Reserved, k.ReservedAt = 0, time.Time{}
			return nil
		})
		return nil, err
	}
	w.event(ctx, api.Event{Type: api.EventVersionStaged, KeyID: k.KeyID, Version: next, Regions: holders(&key.Key)})
	w.log.Info("version staged", "key_id", k.KeyID, "version", next)
	if activated != 0 {
		w.event(ctx, api.Event{Type: api.EventVersionActivated, KeyID: k.KeyID, Version: next, Regions: allRegions(&key.Key)})
	}
	for _, r := range key.Replicas {
		if r.State == api.ReplicaFailed && !holdsAny(&key.Key, r.Region) || r.State == api.ReplicaPendingDeletion {
			continue // never created (replicate to it again), or going away
		}
		if _, err := w.startRun(ctx, key.KeyID, r.Region, 0, 1); err != nil {
			w.log.Warn("staged version not sent; the sweeper will", "key_id", key.KeyID, "dst", r.Region, "err", err)
		}
	}
	if activated != 0 {
		w.syncReplicas(ctx, key.KeyID)
	}
	return w.describe(ctx, key.KeyID)
}

// reservationTimeout is how long a rotation's reservation of a version
// number holds off other rotations (generating a key takes milliseconds; a
// reservation this old was left by a crash).
const reservationTimeout = time.Minute

// canChangeShared checks that k's shared properties may change here: this
// region is its primary and it is neither changing primary nor being deleted.
func (w *Worker) canChangeShared(k *keyRecord) error {
	if k.Role != api.RolePrimary {
		return badRequest("key %s is a replica in %s; its primary region is %s", k.KeyID, w.cfg.Region, k.PrimaryRegion)
	}
	switch k.KeyState {
	case api.KeyStateUpdating:
		return conflict("key %s is handing its primary role over to %s", k.KeyID, k.PendingPrimary)
	case api.KeyStatePendingDeletion:
		return conflict("key %s is pending deletion", k.KeyID)
	}
	return nil
}

func (w *Worker) describe(ctx context.Context, keyID string) (*api.Key, error) {
	k, err := w.loadKey(ctx, keyID)
	if err != nil {
		return nil, err
	}
	return &k.Key, nil
}

// ---- sync and status --------------------------------------------------

// onSync (replica): apply the primary's state if newer, answer with status.
func (w *Worker) onSync(ctx context.Context, env *messages.Envelope) error {
	m := &env.Message
	s := m.Sync
	if s.PrimaryRegion == w.cfg.Region {
		return refuse(reasonStateMismatch, "sync names %s as primary; only a hand-over makes it primary", w.cfg.Region)
	}
	k, _, err := getJSON[keyRecord](ctx, w.res.Keys, s.KeyID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		// Never here, or deleted and acknowledged: say so.
		return w.sendStatus(ctx, &keyRecord{Key: api.Key{KeyID: s.KeyID, PrimaryRegion: m.Src}, Deleted: true}, m.Src, env.Digest)
	}
	if err != nil {
		return err
	}
	if k.Role == api.RolePrimary {
		return refuse(reasonStateMismatch, "sync from %s for key %s, which is primary in %s", m.Src, s.KeyID, w.cfg.Region)
	}
	if k.PrimaryRegion != m.Src {
		return refuse(reasonNotPrimary, "sync from %s; the primary of key %s is %s", m.Src, s.KeyID, k.PrimaryRegion)
	}
	if err := checkEpoch(k.Epoch, s.Epoch); err != nil {
		return err
	}
	if s.Epoch > k.Epoch && s.PrimaryRegion != k.PrimaryRegion {
		// A new primary to tell about this replica (sent below, resent by
		// the sweeper).
		if err := w.markKeyPending(ctx, k.KeyID); err != nil {
			return err
		}
	}
	var activated uint32
	newPrimary := ""
	purge := false
	k, err = w.updateKey(ctx, s.KeyID, func(k *keyRecord) error {
		activated, newPrimary, purge = 0, "", false
		changed := false
		if s.AckStatusSeq > k.StatusAcked && k.StatusAcked < k.StatusSeq {
			k.StatusAcked = min(s.AckStatusSeq, k.StatusSeq)
			changed = true
		}
		if k.Deleted {
			purge = k.StatusAcked >= k.StatusSeq
			if !changed {
				return errNoChange
			}
			return nil
		}
		if s.Epoch > k.Epoch && slices.Contains(k.Versions, s.CurrentVersion) {
			// Apply only with the current version at hand; otherwise keep
			// the old epoch, so the primary sees it and sends the version.
			if k.CurrentVersion != s.CurrentVersion {
				activated = s.CurrentVersion
				noteActivated(k, activated, w.cfg.Now().UTC())
			}
			if k.PrimaryRegion != s.PrimaryRegion {
				newPrimary = s.PrimaryRegion
				k.StatusSeq++ // tell the new primary about this replica
				k.StatusSentAt = w.cfg.Now()
			}
			k.Epoch, k.PrimaryRegion, k.Description, k.CurrentVersion = s.Epoch, s.PrimaryRegion, s.Description, s.CurrentVersion
			k.UpdatedAt = w.cfg.Now()
			changed = true
		}
		if !changed {
			return errNoChange
		}
		return nil
	})
	if err != nil {
		return err
	}
	if purge {
		if err := w.res.Keys.Delete(ctx, k.KeyID); err != nil {
			return err
		}
	}
	if activated != 0 {
		w.event(ctx, api.Event{Type: api.EventVersionActivated, KeyID: k.KeyID, Version: activated, Peer: m.Src})
	}
	if newPrimary != "" {
		w.event(ctx, api.Event{Type: api.EventPrimaryUpdated, KeyID: k.KeyID, Peer: newPrimary, Regions: []string{m.Src, newPrimary}})
		if err := w.sendStatus(ctx, k, newPrimary, nil); err != nil {
			w.log.Warn("status not sent to the new primary; the sweeper will", "key_id", k.KeyID, "err", err)
		}
	}
	return w.sendStatus(ctx, k, m.Src, env.Digest)
}

// onStatus (primary, or old primary collecting acknowledgements of its
// announcement of the new one).
func (w *Worker) onStatus(ctx context.Context, env *messages.Envelope) error {
	m := &env.Message
	st := m.Status
	k, err := w.loadKey(ctx, st.KeyID)
	if err != nil {
		return refuse(reasonUnknownKey, "status from %s for key %s, unknown in %s", m.Src, st.KeyID, w.cfg.Region)
	}
	if k.Role == api.RoleReplica {
		return w.onAnnounceAck(ctx, k, m)
	}
	if _, ok := findReplica(&k.Key, m.Src); !ok {
		if st.State == messages.ReplicaStateDeleted {
			// Dropped already; the acknowledgement may have been lost:
			// send it again, or the tombstone reports forever.
			if len(st.SyncDigest) == 0 {
				return w.ackStatus(ctx, k, m.Src, st.StatusSeq)
			}
			return errDuplicate
		}
		return refuse(reasonWrongPeer, "status from %s, which holds no replica of key %s", m.Src, st.KeyID)
	}
	if stagedVersion(&k.Key) != 0 || k.PendingPrimary != "" {
		// The status may release a staged version or end a hand-over:
		// duties the sweeper must find if this worker stops.
		if err := w.markKeyPending(ctx, k.KeyID); err != nil {
			return err
		}
	}
	now := w.cfg.Now()
	var evs []api.Event
	var activated uint32
	var lost []uint32
	key, err := w.updateKey(ctx, st.KeyID, func(k *keyRecord) error {
		evs, activated, lost = nil, 0, nil
		r, ok := findReplica(&k.Key, m.Src)
		if !ok || k.Role != api.RolePrimary {
			return errNoChange
		}
		changed := false
		if k.KeyState == api.KeyStateUpdating && k.PendingPrimary == "" && r.State == api.ReplicaUpdating &&
			st.PrimaryRegion == w.cfg.Region && st.Epoch >= k.Epoch {
			// This region took the key over, and the old primary now says
			// it is a replica of this one: the hand-over is done.
			k.KeyState = api.KeyStateEnabled
			r.State = replicaState(&k.Key, m.Src, "")
			evs = append(evs, api.Event{Type: api.EventPrimaryUpdated, KeyID: k.KeyID, Peer: m.Src, Regions: []string{m.Src, w.cfg.Region}})
			changed = true
		}
		if st.PrimaryRegion == w.cfg.Region && st.Epoch != r.SyncedEpoch && (len(st.SyncDigest) > 0 || st.Epoch > r.SyncedEpoch) {
			// Its epoch as it says: higher after a sync, or lower than
			// credited (a late sync took it back): then it is synced again.
			if st.Epoch < r.SyncedEpoch {
				delete(k.SyncSent, m.Src) // sync it again now
			}
			r.SyncedEpoch = min(st.Epoch, k.Epoch)
			changed = true
		}
		if st.StatusSeq > r.StatusSeq {
			r.StatusSeq = st.StatusSeq
			changed = true
			switch st.State {
			case messages.ReplicaStateDeleted:
				k.Replicas = slices.DeleteFunc(k.Replicas, func(x api.Replica) bool { return x.Region == m.Src })
				forget(&k.Key, m.Src)
				delete(k.SyncSent, m.Src)
				evs = append(evs, api.Event{Type: api.EventReplicaDeleted, KeyID: k.KeyID, Peer: m.Src})
				if k.PendingPrimary == m.Src {
					evs = append(evs, w.abortHandover(k, "the new primary's replica was deleted"))
				}
				activated = tryActivate(&k.Key, now) // it may have been the last one waited for
				k.UpdatedAt = now
				return nil
			case messages.ReplicaStatePendingDeletion:
				d := time.UnixMilli(st.DeletionDate).UTC()
				if r.State != api.ReplicaPendingDeletion {
					evs = append(evs, api.Event{Type: api.EventReplicaDeletionScheduled, KeyID: k.KeyID, Peer: m.Src})
				}
				if k.PendingPrimary == m.Src {
					// It will not take the key over (onHandover refuses
					// while pending deletion): call the hand-over off.
					evs = append(evs, w.abortHandover(k, "the new primary's replica is pending deletion"))
				}
				r.State, r.DeletionDate = api.ReplicaPendingDeletion, &d
			default: // ENABLED
				if r.State == api.ReplicaPendingDeletion {
					evs = append(evs, api.Event{Type: api.EventReplicaDeletionCancelled, KeyID: k.KeyID, Peer: m.Src})
					r.State = ""
				}
				r.DeletionDate = nil
				r.State = replicaState(&k.Key, m.Src, r.State)
			}
		}
		if st.State != messages.ReplicaStateDeleted && st.PrimaryRegion == w.cfg.Region {
			// Versions the watermark credits to the replica that it does
			// not hold (lost, or restored from an old backup): copy again.
			for _, d := range k.VersionDetails {
				if slices.Contains(d.ReplicatedTo, m.Src) && !slices.Contains(st.Versions, d.Version) {
					lost = append(lost, d.Version)
				}
			}
			for _, v := range lost {
				d := versionDetail(&k.Key, v)
				d.ReplicatedTo = slices.DeleteFunc(d.ReplicatedTo, func(x string) bool { return x == m.Src })
				changed = true
			}
			if len(lost) > 0 {
				r.State = replicaState(&k.Key, m.Src, r.State)
			}
		}
		if !changed {
			return errNoChange
		}
		r.UpdatedAt = now
		setReplica(&k.Key, r)
		// A replica that went pending deletion no longer holds a staged
		// version back (holders).
		activated = tryActivate(&k.Key, now)
		k.UpdatedAt = now
		return nil
	})
	if err != nil {
		return err
	}
	for _, ev := range evs {
		w.event(ctx, ev)
	}
	if activated != 0 {
		w.event(ctx, api.Event{Type: api.EventVersionActivated, KeyID: key.KeyID, Version: activated, Regions: allRegions(&key.Key)})
	}
	if slices.ContainsFunc(key.Replicas, func(r api.Replica) bool { return needsSync(&key.Key, r) }) {
		w.syncReplicas(ctx, key.KeyID)
	}
	if len(lost) > 0 {
		w.log.Warn("replica lacks versions the primary recorded; copying them again", "key_id", key.KeyID, "dst", m.Src, "versions", lost)
	}
	if r, ok := findReplica(&key.Key, m.Src); ok && r.State != api.ReplicaFailed && r.State != api.ReplicaPendingDeletion &&
		key.KeyState == api.KeyStateEnabled && len(missingVersions(&key.Key, m.Src)) > 0 {
		// Lost versions, or a rotation that went on while the replica was
		// pending deletion (now cancelled): copy what it lacks.
		if err := w.markKeyPending(ctx, key.KeyID); err != nil {
			return err
		}
		if _, err := w.startRun(ctx, key.KeyID, m.Src, 0, 1); err != nil {
			w.log.Warn("version not sent; the sweeper will", "key_id", key.KeyID, "dst", m.Src, "err", err)
		}
	}
	if len(st.SyncDigest) == 0 {
		r, _ := findReplica(&key.Key, m.Src)
		return w.ackStatus(ctx, key, m.Src, max(r.StatusSeq, st.StatusSeq))
	}
	return nil
}

// ackStatus acknowledges an unprompted status with a sync carrying the
// key's state. During a hand-over the sync carries the epoch before it: the
// hand-over's epoch goes out only with the new primary's name (announce).
func (w *Worker) ackStatus(ctx context.Context, k *keyRecord, dst string, seq uint64) error {
	if k.PendingPrimary != "" {
		before := *k
		before.Epoch--
		return w.sendSync(ctx, &before, dst, seq)
	}
	return w.sendSync(ctx, k, dst, seq)
}

// abortHandover calls off the hand-over in progress (the new primary
// cannot take the key): the key is ENABLED here again, still primary, and
// replicas are synced at the epoch the hand-over took.
func (w *Worker) abortHandover(k *keyRecord, why string) api.Event {
	target := k.PendingPrimary
	if r, ok := findReplica(&k.Key, target); ok && r.State == api.ReplicaUpdating {
		r.State = replicaState(&k.Key, target, "")
		setReplica(&k.Key, r)
	}
	k.KeyState, k.PendingPrimary, k.HandoverID, k.HandoverDigests = api.KeyStateEnabled, "", "", nil
	w.log.Warn("hand-over called off", "key_id", k.KeyID, "to", target, "reason", why)
	return api.Event{Type: api.EventPrimaryUpdateCancelled, KeyID: k.KeyID, Peer: target, Reason: why}
}

// onAnnounceAck (old primary): a replica confirms it knows the new primary.
func (w *Worker) onAnnounceAck(ctx context.Context, k *keyRecord, m *messages.Message) error {
	st := m.Status
	if !slices.Contains(k.Announce, m.Src) {
		return errDuplicate // statuses cross a hand-over; nothing to do
	}
	if st.PrimaryRegion != k.PrimaryRegion || st.Epoch < k.AnnounceEpoch {
		return errDuplicate // not yet: the next announcement will tell
	}
	_, err := w.updateKey(ctx, k.KeyID, func(k *keyRecord) error {
		if !slices.Contains(k.Announce, m.Src) {
			return errNoChange
		}
		k.Announce = slices.DeleteFunc(k.Announce, func(r string) bool { return r == m.Src })
		return nil
	})
	return err
}

// ---- change of primary region -----------------------------------------

func (w *Worker) apiUpdatePrimaryRegion(ctx context.Context, data []byte) (any, error) {
	var req api.UpdatePrimaryRegionRequest
	if err := decodeKeyRequest(data, &req, &req.KeyID); err != nil {
		return nil, err
	}
	if !w.bundle().HasRegion(req.PrimaryRegion) {
		return nil, badRequest("region %q is not in partition %q", req.PrimaryRegion, w.bundle().Partition())
	}
	k, err := w.loadKey(ctx, req.KeyID)
	if err != nil {
		return nil, err
	}
	if err := w.canChangeShared(k); err != nil {
		return nil, err
	}
	target := req.PrimaryRegion
	if target == w.cfg.Region {
		return nil, badRequest("key %s is already primary in %s", k.KeyID, target)
	}
	if err := w.handoverReady(ctx, k, target); err != nil {
		return nil, err
	}
	if err := w.markKeyPending(ctx, k.KeyID); err != nil {
		return nil, err
	}
	now := w.cfg.Now().UTC()
	key, err := w.updateKey(ctx, k.KeyID, func(k *keyRecord) error {
		if err := w.canChangeShared(k); err != nil {
			return err
		}
		if err := w.handoverReady(ctx, k, target); err != nil {
			return err
		}
		r, _ := findReplica(&k.Key, target)
		r.State, r.UpdatedAt = api.ReplicaUpdating, now
		setReplica(&k.Key, r)
		k.KeyState, k.PendingPrimary = api.KeyStateUpdating, target
		k.Epoch++
		k.HandoverID, k.HandoverSentAt = messages.NewID(), now
		k.UpdatedAt = now
		return nil
	})
	if err != nil {
		return nil, err
	}
	w.event(ctx, api.Event{Type: api.EventPrimaryUpdateStarted, KeyID: key.KeyID, Peer: target, Regions: []string{w.cfg.Region, target}})
	if err := w.sendHandover(ctx, key); err != nil {
		w.log.Warn("hand-over not sent; the sweeper will", "key_id", key.KeyID, "err", err)
	}
	return &key.Key, nil
}

// handoverReady checks that target can take k over now: it holds every
// version, no version is staged, and no other replica is still being
// created or failed (the new primary must know every replica's versions).
func (w *Worker) handoverReady(ctx context.Context, k *keyRecord, target string) error {
	r, ok := findReplica(&k.Key, target)
	if !ok || !holdsAny(&k.Key, target) {
		return badRequest("key %s has no replica in %s; replicate it there first", k.KeyID, target)
	}
	if r.State != api.ReplicaEnabled {
		return conflict("the replica of key %s in %s is %s", k.KeyID, target, r.State)
	}
	if s := stagedVersion(&k.Key); s != 0 {
		return conflict("key %s: version %d is staged; wait until it is current", k.KeyID, s)
	}
	if k.Reserved != 0 && w.cfg.Now().Sub(k.ReservedAt) < reservationTimeout {
		return conflict("key %s is being rotated; wait until the new version is staged and current", k.KeyID)
	}
	for _, o := range k.Replicas {
		if leftBehind(&k.Key, o) {
			continue // failed before it held anything: left behind
		}
		if o.State == api.ReplicaCreating || o.State == api.ReplicaFailed || !complete(&k.Key, o.Region) {
			return conflict("the replica of key %s in %s is %s; wait for it or delete it first", k.KeyID, o.Region, o.State)
		}
		if w.activeRun(ctx, o) != nil {
			return conflict("a replication of key %s to %s is in flight; wait for it", k.KeyID, o.Region)
		}
	}
	return nil
}

// leftBehind reports whether a hand-over leaves replica r out: one whose
// first copy failed (it holds nothing and has no run in flight), to be
// replicated again from the new primary if wanted.
func leftBehind(k *api.Key, r api.Replica) bool {
	return r.State == api.ReplicaFailed && !holdsAny(k, r.Region)
}

func (w *Worker) sendHandover(ctx context.Context, k *keyRecord) error {
	replicas := []string{w.cfg.Region}
	for _, r := range k.Replicas {
		if r.Region != k.PendingPrimary && !leftBehind(&k.Key, r) {
			replicas = append(replicas, r.Region)
		}
	}
	slices.Sort(replicas)
	m := w.newMessage(messages.TypeHandover, k.HandoverID, k.PendingPrimary)
	m.Handover = &messages.Handover{
		KeyID: k.KeyID, Epoch: k.Epoch, CurrentVersion: k.CurrentVersion, Versions: slices.Clone(k.Versions),
		Replicas: replicas, Description: k.Description,
	}
	raw, _, err := w.sign(m)
	if err != nil {
		return err
	}
	// Remember it before it leaves: the accept must name one of these.
	_, err = w.updateKey(ctx, k.KeyID, func(k *keyRecord) error {
		if k.HandoverID != m.ReplicationID {
			return errNoChange
		}
		k.HandoverDigests = append(k.HandoverDigests, messages.Digest(raw))
		if n := len(k.HandoverDigests); n > maxHandoverDigests {
			k.HandoverDigests = k.HandoverDigests[n-maxHandoverDigests:]
		}
		return nil
	})
	if err != nil {
		return err
	}
	return w.publishSigned(ctx, m, raw)
}

// maxHandoverDigests bounds the hand-overs remembered (one is sent per
// MessageTTL while the new primary does not answer; an accept answers one
// that is still valid, so a few suffice).
const maxHandoverDigests = 8

// onHandover (new primary): take the key over and accept.
func (w *Worker) onHandover(ctx context.Context, env *messages.Envelope) error {
	m := &env.Message
	h := m.Handover
	k, err := w.loadKey(ctx, h.KeyID)
	if err != nil {
		return refuse(reasonStateMismatch, "hand-over of key %s, which has no replica in %s", h.KeyID, w.cfg.Region)
	}
	if k.Role == api.RolePrimary && k.Epoch >= h.Epoch && k.HandoverID == m.ReplicationID {
		// Taken over already (the accept was lost): accept again.
		if err := w.sendAccept(ctx, k, env); err != nil {
			return err
		}
		return errDuplicate
	}
	if k.Role != api.RoleReplica || k.PrimaryRegion != m.Src {
		return refuse(reasonNotPrimary, "hand-over of key %s from %s; its primary is %s", h.KeyID, m.Src, k.PrimaryRegion)
	}
	if k.KeyState == api.KeyStatePendingDeletion {
		// Its status told the old primary, which calls the hand-over off.
		return refuse(reasonStateMismatch, "hand-over of key %s, which is pending deletion in %s", h.KeyID, w.cfg.Region)
	}
	if h.Epoch <= k.Epoch {
		return refuse(reasonStateMismatch, "hand-over of key %s at epoch %d; this replica holds epoch %d", h.KeyID, h.Epoch, k.Epoch)
	}
	if err := checkEpoch(k.Epoch, h.Epoch); err != nil {
		return err
	}
	for _, v := range h.Versions {
		if !slices.Contains(k.Versions, v) {
			return refuse(reasonStateMismatch, "hand-over of key %s: version %d is not held in %s", h.KeyID, v, w.cfg.Region)
		}
	}
	if err := w.markKeyPending(ctx, h.KeyID); err != nil {
		return err
	}
	now := w.cfg.Now().UTC()
	key, err := w.updateKey(ctx, h.KeyID, func(k *keyRecord) error {
		if k.Role != api.RoleReplica || k.PrimaryRegion != m.Src || h.Epoch <= k.Epoch || k.KeyState != api.KeyStateEnabled {
			return refuse(reasonStateMismatch, "key %s changed meanwhile", h.KeyID)
		}
		holding := append(slices.Clone(h.Replicas), w.cfg.Region)
		slices.Sort(holding)
		k.VersionDetails = takeOverDetails(k.VersionDates, h.Versions, h.CurrentVersion, holding, now)
		k.VersionDates = nil
		k.Replicas = nil
		k.SyncSent = map[string]syncSent{}
		for _, r := range h.Replicas {
			state := api.ReplicaEnabled
			if r == m.Src {
				state = api.ReplicaUpdating // until it confirms being a replica
			}
			k.Replicas = append(k.Replicas, api.Replica{Region: r, State: state, UpdatedAt: now})
			// Replicas hear of this region from the old primary first;
			// resend only if they do not report within MessageTTL.
			k.SyncSent[r] = syncSent{Epoch: h.Epoch, At: now}
		}
		k.Role, k.PrimaryRegion, k.KeyState = api.RolePrimary, w.cfg.Region, api.KeyStateUpdating
		k.Epoch, k.CurrentVersion, k.Description = h.Epoch, h.CurrentVersion, h.Description
		k.HandoverID = m.ReplicationID
		k.StatusSeq, k.StatusAcked, k.Announce = 0, 0, nil
		k.UpdatedAt = now
		return nil
	})
	if err != nil {
		return err
	}
	w.event(ctx, api.Event{Type: api.EventPrimaryUpdateStarted, KeyID: key.KeyID, Peer: m.Src, Regions: []string{m.Src, w.cfg.Region}})
	return w.sendAccept(ctx, key, env)
}

func (w *Worker) sendAccept(ctx context.Context, k *keyRecord, handover *messages.Envelope) error {
	m := w.newMessage(messages.TypeAccept, handover.Message.ReplicationID, handover.Message.Src)
	m.Accept = &messages.Accept{HandoverDigest: handover.Digest, KeyID: k.KeyID, Epoch: handover.Message.Handover.Epoch}
	return w.sendSigned(ctx, m)
}

// onAccept (old primary): become a replica of the new primary and tell the
// other replicas.
func (w *Worker) onAccept(ctx context.Context, env *messages.Envelope) error {
	m := &env.Message
	a := m.Accept
	k, err := w.loadKey(ctx, a.KeyID)
	if err != nil {
		return refuse(reasonUnknownKey, "accept for key %s, unknown in %s", a.KeyID, w.cfg.Region)
	}
	if k.Role == api.RoleReplica && k.PrimaryRegion == m.Src && k.Epoch >= a.Epoch {
		return errDuplicate
	}
	if k.Role != api.RolePrimary || k.KeyState != api.KeyStateUpdating || k.PendingPrimary != m.Src ||
		k.HandoverID != m.ReplicationID || k.Epoch != a.Epoch ||
		!slices.ContainsFunc(k.HandoverDigests, func(d []byte) bool { return bytes.Equal(d, a.HandoverDigest) }) {
		return refuse(reasonStateMismatch, "accept from %s does not answer the hand-over of key %s in progress", m.Src, a.KeyID)
	}
	if err := w.markKeyPending(ctx, a.KeyID); err != nil {
		return err
	}
	now := w.cfg.Now().UTC()
	key, err := w.updateKey(ctx, a.KeyID, func(k *keyRecord) error {
		if k.Role != api.RolePrimary || k.HandoverID != m.ReplicationID {
			return refuse(reasonStateMismatch, "key %s changed meanwhile", a.KeyID)
		}
		k.Announce = nil
		for _, r := range k.Replicas {
			if r.Region != m.Src && !leftBehind(&k.Key, r) {
				k.Announce = append(k.Announce, r.Region)
			}
		}
		k.AnnounceEpoch, k.AnnounceSentAt = k.Epoch, now
		k.Role, k.PrimaryRegion, k.KeyState, k.PendingPrimary = api.RoleReplica, m.Src, api.KeyStateEnabled, ""
		keepDates(k)
		k.Replicas, k.VersionDetails, k.SyncSent, k.HandoverID, k.HandoverDigests = nil, nil, nil, "", nil
		k.StatusSeq++ // tell the new primary this region is its replica now
		k.StatusSentAt = now
		k.UpdatedAt = now
		return nil
	})
	if err != nil {
		return err
	}
	w.event(ctx, api.Event{Type: api.EventPrimaryUpdated, KeyID: key.KeyID, Peer: m.Src, Regions: []string{w.cfg.Region, m.Src}})
	w.log.Info("primary handed over", "key_id", key.KeyID, "new_primary", m.Src)
	if err := w.sendStatus(ctx, key, m.Src, nil); err != nil {
		w.log.Warn("status not sent to the new primary; the sweeper will", "key_id", key.KeyID, "err", err)
	}
	w.announce(ctx, key)
	return nil
}

// announce tells the replicas in k.Announce who the new primary is.
func (w *Worker) announce(ctx context.Context, k *keyRecord) {
	for _, dst := range k.Announce {
		if err := w.sendSync(ctx, k, dst, 0); err != nil {
			w.log.Warn("new primary not announced; the sweeper will", "key_id", k.KeyID, "dst", dst, "err", err)
		}
	}
}

// ---- deletion ---------------------------------------------------------

func (w *Worker) apiScheduleKeyDeletion(ctx context.Context, data []byte) (any, error) {
	var req api.ScheduleKeyDeletionRequest
	if err := decodeKeyRequest(data, &req, &req.KeyID); err != nil {
		return nil, err
	}
	wait := w.cfg.DeletionWaitingPeriod
	if req.PendingWindowDays != 0 {
		if req.PendingWindowDays < 1 || req.PendingWindowDays > 30 {
			return nil, badRequest("pending_window_days must be 1 to 30")
		}
		wait = time.Duration(req.PendingWindowDays) * 24 * time.Hour
	}
	if err := w.markKeyPending(ctx, req.KeyID); err != nil {
		return nil, err
	}
	now := w.cfg.Now().UTC()
	key, err := w.updateLiveKey(ctx, req.KeyID, func(k *keyRecord) error {
		switch k.KeyState {
		case api.KeyStatePendingDeletion:
			return conflict("key %s is already pending deletion (on %s)", k.KeyID, k.DeletionDate.Format(time.RFC3339))
		case api.KeyStateUpdating:
			return conflict("key %s is changing its primary region; wait until it is done", k.KeyID)
		}
		if k.Role == api.RolePrimary {
			var live []string
			for _, r := range k.Replicas {
				if holdsAny(&k.Key, r.Region) || w.activeRun(ctx, r) != nil {
					live = append(live, r.Region)
				}
			}
			slices.Sort(live)
			if len(live) > 0 {
				return conflict("key %s is a primary with replicas in %s; delete them first", k.KeyID, strings.Join(live, ", "))
			}
		} else {
			k.StatusSeq++
			k.StatusSentAt = now
		}
		d := now.Add(wait)
		k.KeyState, k.DeletionDate, k.UpdatedAt = api.KeyStatePendingDeletion, &d, now
		return nil
	})
	if err != nil {
		return nil, err
	}
	typ := api.EventKeyDeletionScheduled
	if key.Role == api.RoleReplica {
		typ = api.EventReplicaDeletionScheduled
		if err := w.sendStatus(ctx, key, key.PrimaryRegion, nil); err != nil {
			w.log.Warn("status not sent to the primary; the sweeper will", "key_id", key.KeyID, "err", err)
		}
	}
	w.event(ctx, api.Event{Type: typ, KeyID: key.KeyID, Reason: "deletion on " + key.DeletionDate.Format(time.RFC3339)})
	return &key.Key, nil
}

func (w *Worker) apiCancelKeyDeletion(ctx context.Context, data []byte) (any, error) {
	var req api.KeyRequest
	if err := decodeKeyRequest(data, &req, &req.KeyID); err != nil {
		return nil, err
	}
	if err := w.markKeyPending(ctx, req.KeyID); err != nil {
		return nil, err
	}
	now := w.cfg.Now().UTC()
	key, err := w.updateLiveKey(ctx, req.KeyID, func(k *keyRecord) error {
		if k.KeyState != api.KeyStatePendingDeletion {
			return conflict("key %s is not pending deletion", k.KeyID)
		}
		if k.Role == api.RoleReplica {
			k.StatusSeq++
			k.StatusSentAt = now
		}
		k.KeyState, k.DeletionDate, k.UpdatedAt = api.KeyStateEnabled, nil, now
		return nil
	})
	if err != nil {
		return nil, err
	}
	typ := api.EventKeyDeletionCancelled
	if key.Role == api.RoleReplica {
		typ = api.EventReplicaDeletionCancelled
		if err := w.sendStatus(ctx, key, key.PrimaryRegion, nil); err != nil {
			w.log.Warn("status not sent to the primary; the sweeper will", "key_id", key.KeyID, "err", err)
		}
	}
	w.event(ctx, api.Event{Type: typ, KeyID: key.KeyID})
	return &key.Key, nil
}

// deleteNow destroys every version of k in the HSM and removes the key:
// a primary's record goes at once, a replica's stays as a tombstone until
// its primary acknowledges the deletion.
func (w *Worker) deleteNow(ctx context.Context, k *keyRecord) error {
	for _, v := range k.Versions {
		ref := hsmsvc.KeyRef{KeyID: k.KeyID, Version: v}
		err := w.hsmOp("destroy_key", func() error { return w.cfg.HSM.DestroyKey(ctx, ref) })
		if err != nil && !errors.Is(err, hsmsvc.ErrNotFound) {
			return fmt.Errorf("destroy version %d: %w", v, err)
		}
	}
	if k.Role == api.RolePrimary {
		if err := w.res.Keys.Delete(ctx, k.KeyID); err != nil {
			return err
		}
		w.event(ctx, api.Event{Type: api.EventKeyDeleted, KeyID: k.KeyID})
		w.log.Info("key deleted", "key_id", k.KeyID)
		return nil
	}
	now := w.cfg.Now().UTC()
	key, err := w.updateKey(ctx, k.KeyID, func(k *keyRecord) error {
		if k.Deleted || k.KeyState != api.KeyStatePendingDeletion {
			return errNoChange
		}
		k.Deleted = true
		k.Versions, k.CurrentVersion, k.DeletionDate, k.Enabled = nil, 0, nil, false
		k.StatusSeq++
		k.StatusSentAt = now
		k.UpdatedAt = now
		return nil
	})
	if err != nil {
		return err
	}
	if !key.Deleted {
		return nil
	}
	w.event(ctx, api.Event{Type: api.EventReplicaDeleted, KeyID: k.KeyID, Peer: key.PrimaryRegion})
	w.log.Info("replica deleted", "key_id", k.KeyID)
	return w.sendStatus(ctx, key, key.PrimaryRegion, nil)
}

// ---- sweeper ----------------------------------------------------------

// tombstoneLifetime bounds how long a deleted replica keeps reporting its
// deletion to a primary that does not acknowledge it.
const tombstoneLifetime = 24 * time.Hour

// sweepKey does the lifecycle work due for one key: resend what was not
// acknowledged within MessageTTL, delete when the date has come, restart
// the copy of versions a replica lacks. It reports whether work remains.
func (w *Worker) sweepKey(ctx context.Context, keyID string) (bool, error) {
	ctx = withActor(ctx, "worker")
	k, _, err := getJSON[keyRecord](ctx, w.res.Keys, keyID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return true, err
	}
	normalize(k)
	now := w.cfg.Now()
	due := func(t time.Time) bool { return now.Sub(t) >= w.cfg.MessageTTL }
	pending := false
	var errs []error
	if k.KeyState == api.KeyStatePendingDeletion && !k.Deleted {
		pending = true
		if k.DeletionDate != nil && !now.Before(*k.DeletionDate) {
			if err := w.deleteNow(ctx, k); err != nil {
				return true, err
			}
			return w.sweepKey(ctx, keyID) // a tombstone still reports
		}
	}
	switch k.Role {
	case api.RolePrimary:
		if k.KeyState == api.KeyStateUpdating && k.PendingPrimary != "" {
			pending = true
			if due(k.HandoverSentAt) {
				_, err := w.updateKey(ctx, keyID, func(k *keyRecord) error {
					if k.PendingPrimary == "" {
						return errNoChange
					}
					k.HandoverSentAt = now
					return nil
				})
				if err == nil {
					err = w.sendHandover(ctx, k)
				}
				errs = append(errs, err)
			}
		}
		if k.KeyState == api.KeyStateUpdating && k.PendingPrimary == "" {
			pending = true // new primary waiting for the old one's status
		}
		for _, r := range k.Replicas {
			if needsSync(&k.Key, r) {
				pending = true
			}
			if r.State != api.ReplicaFailed && r.State != api.ReplicaPendingDeletion && len(missingVersions(&k.Key, r.Region)) > 0 {
				pending = true
				if w.activeRun(ctx, r) == nil {
					if _, err := w.startRun(ctx, keyID, r.Region, 0, 1); err != nil {
						errs = append(errs, err)
					}
				}
			}
		}
		if s := stagedVersion(&k.Key); s != 0 {
			pending = true
			if len(waitingFor(&k.Key, s)) == 0 {
				// Nobody left to wait for (a receipt or status that
				// should have activated it was cut short).
				var activated uint32
				key, err := w.updateKey(ctx, keyID, func(k *keyRecord) error {
					if activated = tryActivate(&k.Key, now); activated == 0 {
						return errNoChange
					}
					return nil
				})
				errs = append(errs, err)
				if err == nil && activated != 0 {
					w.event(ctx, api.Event{Type: api.EventVersionActivated, KeyID: keyID, Version: activated, Regions: allRegions(&key.Key)})
				}
			}
		}
		if pending {
			w.syncReplicas(ctx, keyID)
		}
	case api.RoleReplica:
		if k.Deleted && now.Sub(k.UpdatedAt) > tombstoneLifetime {
			// Never acknowledged (the primary is gone too): give up.
			if err := w.res.Keys.Delete(ctx, keyID); err != nil {
				return true, err
			}
			w.log.Warn("deleted replica's tombstone removed without the primary's acknowledgement", "key_id", keyID)
			return false, nil
		}
		if k.StatusSeq > k.StatusAcked {
			pending = true
			if due(k.StatusSentAt) {
				_, err := w.updateKey(ctx, keyID, func(k *keyRecord) error { k.StatusSentAt = now; return nil })
				if err == nil {
					err = w.sendStatus(ctx, k, k.PrimaryRegion, nil)
				}
				errs = append(errs, err)
			}
		} else if k.Deleted {
			// Acknowledged: the tombstone can go.
			if err := w.res.Keys.Delete(ctx, keyID); err != nil {
				return true, err
			}
			return false, nil
		}
		if len(k.Announce) > 0 {
			pending = true
			if due(k.AnnounceSentAt) {
				_, err := w.updateKey(ctx, keyID, func(k *keyRecord) error { k.AnnounceSentAt = now; return nil })
				if err == nil {
					w.announce(ctx, k)
				}
				errs = append(errs, err)
			}
		}
	}
	return pending, errors.Join(errs...)
}
