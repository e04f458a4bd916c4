package workers

import (
	"context"
	"errors"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/internal/repl"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/nats-io/nats.go/jetstream"
)

// This file is the shell of key.sync and key.status, which keep replicas in
// step with their primary after the first copy (docs/LIFECYCLE.md; the
// decisions are in internal/repl/sync.go: SyncDue, CheckSync, ApplySync,
// ApplyStatus, AnnounceAcked). Rotation is in rotate.go, the change of
// primary region in handover.go, deletion in deletion.go. Both sides
// resend what was not acknowledged after MessageTTL: the sweeper finds
// such keys through a "lc.<key id>" entry in the PENDING index.

// sendSync sends k's shared state, as this region holds it, to dst.
func (w *Worker) sendSync(ctx context.Context, k *repl.Key, dst string, ack uint64) error {
	m := w.newMessage(messages.TypeSync, messages.NewID(), dst)
	m.Sync = repl.SyncOf(k, ack)
	return w.sendSigned(ctx, m)
}

// sendStatus sends this replica's state to dst: in answer to the sync
// with syncDigest, or unprompted (syncDigest nil).
func (w *Worker) sendStatus(ctx context.Context, k *repl.Key, dst string, syncDigest []byte) error {
	m := w.newMessage(messages.TypeStatus, messages.NewID(), dst)
	m.Status = repl.StatusOf(k, syncDigest)
	return w.sendSigned(ctx, m)
}

// syncReplicas sends key.sync to every replica that has not confirmed the
// key's epoch and was not sent one within MessageTTL (repl.SyncDue).
func (w *Worker) syncReplicas(ctx context.Context, keyID string) {
	if err := w.markKeyPending(ctx, keyID); err != nil {
		w.log.Warn("pending index not written", "key_id", keyID, "err", err)
	}
	var due []string
	key, err := w.updateKey(ctx, keyID, func(k *repl.Key) (bool, error) {
		due = repl.SyncDue(k, w.core(), w.cfg.Now())
		return len(due) > 0, nil
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
func (w *Worker) onSync(ctx context.Context, env *messages.Envelope) (outcome, error) {
	m := &env.Message
	s := m.Sync
	if ref := repl.CheckSync(nil, m.Src, s, w.core()); ref != nil {
		return accepted, ref
	}
	k, _, err := getJSON[repl.Key](ctx, w.res.Keys, s.KeyID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		// Never here, or deleted and acknowledged: say so.
		return accepted, w.sendStatus(ctx, &repl.Key{KeyID: s.KeyID, PrimaryRegion: m.Src, Deleted: true}, m.Src, env.Digest)
	}
	if err != nil {
		return accepted, err
	}
	if ref := repl.CheckSync(k, m.Src, s, w.core()); ref != nil {
		return accepted, ref
	}
	if repl.SyncNamesNewPrimary(k, s) {
		// A new primary to tell about this replica (sent below, resent by
		// the sweeper).
		if err := w.markKeyPending(ctx, k.KeyID); err != nil {
			return accepted, err
		}
	}
	var out repl.SyncOutcome
	k, err = w.updateKey(ctx, s.KeyID, func(k *repl.Key) (bool, error) {
		out = repl.ApplySync(k, s, w.cfg.Now())
		return out.Changed, nil
	})
	if err != nil {
		return accepted, err
	}
	if out.Purge {
		if err := w.res.Keys.Delete(ctx, k.KeyID); err != nil {
			return accepted, err
		}
	}
	if out.Activated != 0 {
		w.event(ctx, api.Event{Type: api.EventVersionActivated, KeyID: k.KeyID, Version: out.Activated, Peer: m.Src})
	}
	if out.NewPrimary != "" {
		w.event(ctx, api.Event{Type: api.EventPrimaryUpdated, KeyID: k.KeyID, Peer: out.NewPrimary, Regions: []string{m.Src, out.NewPrimary}})
		if err := w.sendStatus(ctx, k, out.NewPrimary, nil); err != nil {
			w.log.Warn("status not sent to the new primary; the sweeper will", "key_id", k.KeyID, "err", err)
		}
	}
	return accepted, w.sendStatus(ctx, k, m.Src, env.Digest)
}

// onStatus (primary, or old primary collecting acknowledgements of its
// announcement of the new one).
func (w *Worker) onStatus(ctx context.Context, env *messages.Envelope) (outcome, error) {
	m := &env.Message
	st := m.Status
	k, err := w.loadKey(ctx, st.KeyID)
	if err != nil {
		return accepted, refuse(reasonUnknownKey, "status from %s for key %s, unknown in %s", m.Src, st.KeyID, w.cfg.Region)
	}
	if k.Role == repl.ReplicaRole {
		return w.onAnnounceAck(ctx, k, m)
	}
	if _, ok := k.Replica(m.Src); !ok {
		if st.State == messages.ReplicaStateDeleted {
			// Dropped already; the acknowledgement may have been lost:
			// send it again, or the tombstone reports forever.
			if len(st.SyncDigest) == 0 {
				return accepted, w.ackStatus(ctx, k, m.Src, st.StatusSeq)
			}
			return duplicate, nil
		}
		return accepted, refuse(reasonWrongPeer, "status from %s, which holds no replica of key %s", m.Src, st.KeyID)
	}
	if k.Staged() != 0 || k.PendingPrimary != "" {
		// The status may release a staged version or end a hand-over:
		// duties the sweeper must find if this worker stops.
		if err := w.markKeyPending(ctx, k.KeyID); err != nil {
			return accepted, err
		}
	}
	var out repl.StatusOutcome
	key, err := w.updateKey(ctx, st.KeyID, func(k *repl.Key) (bool, error) {
		out = repl.ApplyStatus(k, m.Src, st, w.core(), w.cfg.Now())
		return out.Changed, nil
	})
	if err != nil {
		return accepted, err
	}
	for _, ev := range out.Events {
		if ev.Type == api.EventPrimaryUpdateCancelled {
			w.log.Warn("hand-over called off", "key_id", ev.KeyID, "to", ev.Peer, "reason", ev.Reason)
		}
		w.event(ctx, ev)
	}
	if out.Activated != 0 {
		w.event(ctx, api.Event{Type: api.EventVersionActivated, KeyID: key.KeyID, Version: out.Activated, Regions: key.AllRegions()})
	}
	if key.AnyNeedsSync() {
		w.syncReplicas(ctx, key.KeyID)
	}
	if len(out.Lost) > 0 {
		w.log.Warn("replica lacks versions the primary recorded; copying them again", "key_id", key.KeyID, "dst", m.Src, "versions", out.Lost)
	}
	if repl.CopyAfterStatus(key, m.Src) {
		// Lost versions, or a rotation that went on while the replica was
		// pending deletion (now cancelled): copy what it lacks.
		if err := w.markKeyPending(ctx, key.KeyID); err != nil {
			return accepted, err
		}
		if _, err := w.startRun(ctx, key.KeyID, m.Src, 0, 1); err != nil {
			w.log.Warn("version not sent; the sweeper will", "key_id", key.KeyID, "dst", m.Src, "err", err)
		}
	}
	if len(st.SyncDigest) == 0 {
		r, _ := key.Replica(m.Src)
		return accepted, w.ackStatus(ctx, key, m.Src, max(r.StatusSeq, st.StatusSeq))
	}
	return accepted, nil
}

// ackStatus acknowledges an unprompted status with a sync carrying the
// key's state (repl.AckSyncOf).
func (w *Worker) ackStatus(ctx context.Context, k *repl.Key, dst string, seq uint64) error {
	m := w.newMessage(messages.TypeSync, messages.NewID(), dst)
	m.Sync = repl.AckSyncOf(k, seq)
	return w.sendSigned(ctx, m)
}

// onAnnounceAck (old primary): a replica confirms it knows the new primary.
func (w *Worker) onAnnounceAck(ctx context.Context, k *repl.Key, m *messages.Message) (outcome, error) {
	if !repl.AnnounceAcked(k, m.Src, m.Status) {
		return duplicate, nil // crossed a hand-over, or not yet: the next announcement tells
	}
	_, err := w.updateKey(ctx, k.KeyID, func(k *repl.Key) (bool, error) {
		return repl.DropAnnounce(k, m.Src), nil
	})
	return accepted, err
}
