package workers

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/internal/repl"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/nats-io/nats.go/jetstream"
)

// This file keeps replicas in step with their primary after the first copy
// (docs/LIFECYCLE.md; rotation is in rotate.go, the change of primary region
// in handover.go, deletion in deletion.go), with two messages:
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
// sendSync sends k's shared state, as this region holds it, to dst.
func (w *Worker) sendSync(ctx context.Context, k *repl.Key, dst string, ack uint64) error {
	m := w.newMessage(messages.TypeSync, messages.NewID(), dst)
	m.Sync = &messages.Sync{
		KeyID: k.KeyID, Epoch: k.Epoch, PrimaryRegion: k.PrimaryRegion, CurrentVersion: k.CurrentVersion,
		Versions: slices.Clone(k.Versions), Description: k.Description, AckStatusSeq: ack,
	}
	return w.sendSigned(ctx, m)
}

// sendStatus sends this replica's state to dst: in answer to the sync
// with syncDigest, or unprompted (syncDigest nil).
func (w *Worker) sendStatus(ctx context.Context, k *repl.Key, dst string, syncDigest []byte) error {
	m := w.newMessage(messages.TypeStatus, messages.NewID(), dst)
	st := &messages.Status{
		KeyID: k.KeyID, Epoch: k.Epoch, PrimaryRegion: k.PrimaryRegion, StatusSeq: k.StatusSeq,
		State: messages.ReplicaStateEnabled, Versions: slices.Clone(k.Versions), SyncDigest: syncDigest,
	}
	switch {
	case k.Deleted:
		st.State, st.Versions = messages.ReplicaStateDeleted, nil
	case k.KeyState == repl.KeyPendingDeletion && k.DeletionDate != nil:
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
	key, err := w.updateKey(ctx, keyID, func(k *repl.Key) error {
		due = nil
		if k.Role != repl.Primary || k.PendingPrimary != "" {
			// Not the primary, or handing over: the epoch of a hand-over
			// is announced with the new primary's name, after the accept.
			return errNoChange
		}
		now := w.cfg.Now()
		for _, r := range k.Replicas {
			last := k.SyncSent[r.Region]
			if k.NeedsSync(r) && (last.Epoch < k.Epoch || now.Sub(last.At) >= w.cfg.MessageTTL) {
				due = append(due, r.Region)
			}
		}
		if len(due) == 0 {
			return errNoChange
		}
		if k.SyncSent == nil {
			k.SyncSent = map[string]repl.SyncSent{}
		}
		for _, r := range due {
			k.SyncSent[r] = repl.SyncSent{Epoch: k.Epoch, At: now}
		}
		return nil
	})
	if err != nil {
		w.log.Warn("sync not sent; the sweeper will", "key_id", keyID, "err", err)
		return
	}
	for _, dst := range due {
		r, _ := key.Replica(dst)
		if err := w.sendSync(ctx, key, dst, r.StatusSeq); err != nil {
			w.log.Warn("sync not sent; the sweeper will", "key_id", keyID, "dst", dst, "err", err)
		}
	}
}

// onSync (replica): apply the primary's state if newer, answer with status.
func (w *Worker) onSync(ctx context.Context, env *messages.Envelope) error {
	m := &env.Message
	s := m.Sync
	if s.PrimaryRegion == w.cfg.Region {
		return refuse(reasonStateMismatch, "sync names %s as primary; only a hand-over makes it primary", w.cfg.Region)
	}
	k, _, err := getJSON[repl.Key](ctx, w.res.Keys, s.KeyID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		// Never here, or deleted and acknowledged: say so.
		return w.sendStatus(ctx, &keyRecord{KeyID: s.KeyID, PrimaryRegion: m.Src, Deleted: true}, m.Src, env.Digest)
	}
	if err != nil {
		return err
	}
	if k.Role == repl.Primary {
		return refuse(reasonStateMismatch, "sync from %s for key %s, which is primary in %s", m.Src, s.KeyID, w.cfg.Region)
	}
	if k.PrimaryRegion != m.Src {
		return refuse(reasonNotPrimary, "sync from %s; the primary of key %s is %s", m.Src, s.KeyID, k.PrimaryRegion)
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
	k, err = w.updateKey(ctx, s.KeyID, func(k *repl.Key) error {
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
				k.NoteActivated(activated, w.cfg.Now().UTC())
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
	if k.Role == repl.ReplicaRole {
		return w.onAnnounceAck(ctx, k, m)
	}
	if _, ok := k.Replica(m.Src); !ok {
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
	if k.Staged() != 0 || k.PendingPrimary != "" {
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
	key, err := w.updateKey(ctx, st.KeyID, func(k *repl.Key) error {
		evs, activated, lost = nil, 0, nil
		r, ok := k.Replica(m.Src)
		if !ok || k.Role != repl.Primary {
			return errNoChange
		}
		changed := false
		if k.KeyState == repl.KeyUpdating && k.PendingPrimary == "" && r.State == repl.ReplicaUpdating &&
			st.PrimaryRegion == w.cfg.Region && st.Epoch >= k.Epoch {
			// This region took the key over, and the old primary now says
			// it is a replica of this one: the hand-over is done.
			k.KeyState = repl.KeyEnabled
			r.State = k.ReplicaState(m.Src, "")
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
				k.Replicas = slices.DeleteFunc(k.Replicas, func(x repl.Replica) bool { return x.Region == m.Src })
				k.Forget(m.Src)
				delete(k.SyncSent, m.Src)
				evs = append(evs, api.Event{Type: api.EventReplicaDeleted, KeyID: k.KeyID, Peer: m.Src})
				if k.PendingPrimary == m.Src {
					evs = append(evs, w.abortHandover(k, "the new primary's replica was deleted"))
				}
				activated = k.TryActivate(now) // it may have been the last one waited for
				k.UpdatedAt = now
				return nil
			case messages.ReplicaStatePendingDeletion:
				d := time.UnixMilli(st.DeletionDate).UTC()
				if r.State != repl.ReplicaPendingDeletion {
					evs = append(evs, api.Event{Type: api.EventReplicaDeletionScheduled, KeyID: k.KeyID, Peer: m.Src})
				}
				if k.PendingPrimary == m.Src {
					// It will not take the key over (onHandover refuses
					// while pending deletion): call the hand-over off.
					evs = append(evs, w.abortHandover(k, "the new primary's replica is pending deletion"))
				}
				r.State, r.DeletionDate = repl.ReplicaPendingDeletion, &d
			default: // ENABLED
				if r.State == repl.ReplicaPendingDeletion {
					evs = append(evs, api.Event{Type: api.EventReplicaDeletionCancelled, KeyID: k.KeyID, Peer: m.Src})
					r.State = ""
				}
				r.DeletionDate = nil
				r.State = k.ReplicaState(m.Src, r.State)
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
				d := k.Version(v)
				d.ReplicatedTo = slices.DeleteFunc(d.ReplicatedTo, func(x string) bool { return x == m.Src })
				changed = true
			}
			if len(lost) > 0 {
				r.State = k.ReplicaState(m.Src, r.State)
			}
		}
		if !changed {
			return errNoChange
		}
		r.UpdatedAt = now
		k.SetReplica(r)
		// A replica that went pending deletion no longer holds a staged
		// version back (holders).
		activated = k.TryActivate(now)
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
		w.event(ctx, api.Event{Type: api.EventVersionActivated, KeyID: key.KeyID, Version: activated, Regions: key.AllRegions()})
	}
	if slices.ContainsFunc(key.Replicas, func(r repl.Replica) bool { return key.NeedsSync(r) }) {
		w.syncReplicas(ctx, key.KeyID)
	}
	if len(lost) > 0 {
		w.log.Warn("replica lacks versions the primary recorded; copying them again", "key_id", key.KeyID, "dst", m.Src, "versions", lost)
	}
	if r, ok := key.Replica(m.Src); ok && r.State != repl.ReplicaFailed && r.State != repl.ReplicaPendingDeletion &&
		key.KeyState == repl.KeyEnabled && len(key.Missing(m.Src)) > 0 {
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
		r, _ := key.Replica(m.Src)
		return w.ackStatus(ctx, key, m.Src, max(r.StatusSeq, st.StatusSeq))
	}
	return nil
}

// ackStatus acknowledges an unprompted status with a sync carrying the
// key's state. During a hand-over the sync carries the epoch before it: the
// hand-over's epoch goes out only with the new primary's name (announce).
func (w *Worker) ackStatus(ctx context.Context, k *repl.Key, dst string, seq uint64) error {
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
func (w *Worker) abortHandover(k *repl.Key, why string) api.Event {
	target := k.PendingPrimary
	if r, ok := k.Replica(target); ok && r.State == repl.ReplicaUpdating {
		r.State = k.ReplicaState(target, "")
		k.SetReplica(r)
	}
	k.KeyState, k.PendingPrimary, k.HandoverID, k.HandoverDigests = repl.KeyEnabled, "", "", nil
	w.log.Warn("hand-over called off", "key_id", k.KeyID, "to", target, "reason", why)
	return api.Event{Type: api.EventPrimaryUpdateCancelled, KeyID: k.KeyID, Peer: target, Reason: why}
}

// onAnnounceAck (old primary): a replica confirms it knows the new primary.
func (w *Worker) onAnnounceAck(ctx context.Context, k *repl.Key, m *messages.Message) error {
	st := m.Status
	if !slices.Contains(k.Announce, m.Src) {
		return errDuplicate // statuses cross a hand-over; nothing to do
	}
	if st.PrimaryRegion != k.PrimaryRegion || st.Epoch < k.AnnounceEpoch {
		return errDuplicate // not yet: the next announcement will tell
	}
	_, err := w.updateKey(ctx, k.KeyID, func(k *repl.Key) error {
		if !slices.Contains(k.Announce, m.Src) {
			return errNoChange
		}
		k.Announce = slices.DeleteFunc(k.Announce, func(r string) bool { return r == m.Src })
		return nil
	})
	return err
}
