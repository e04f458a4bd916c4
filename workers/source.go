package workers

import (
	"context"
	"errors"
	"fmt"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/repl"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/nats-io/nats.go/jetstream"
)

// This file is the shell of the source role of a run: the decisions are
// the core's (internal/repl/source.go: CheckStart, Start, AttachRun,
// OnOffer, AfterWrap, OnReceipt, RecordReceipt, AfterReceipt); this file
// reads the records, asks the HSM what the core asks, and writes and sends
// in the order exec.go sets out. The destination role is in destination.go.

// startReplication begins (or finds) the run that copies keyID to dst.
// Asking again for a replica that exists or is being created returns that
// run: the call is idempotent. A replica that lacks versions (a new one, or
// one that missed a rotation) gets the next version it lacks.
func (w *Worker) startReplication(ctx context.Context, keyID, dst string) (*repl.Run, error) {
	return w.startRun(ctx, keyID, dst, 0, 1)
}

// replicaPolicy is the policy an init to dst carries for the replica it
// may create there: the one replicate-key asked for, else the key's own in
// this region (docs/AUTHZ.md, "Replicas").
func (w *Worker) replicaPolicy(k *repl.Key, dst string) string {
	if p, ok := k.ReplicaPolicies[dst]; ok {
		return p
	}
	if len(k.Policy) > messages.MaxPolicySize {
		return "" // too long to travel: the destination's default
	}
	return k.Policy
}

// startRun starts a run that copies one version of keyID to dst: version,
// or (version 0) the next one dst lacks. attempt numbers the tries for the
// same version (the sweeper starts attempts after the first). One run at a
// time is in flight per replica: while one is, startRun returns it.
func (w *Worker) startRun(ctx context.Context, keyID, dst string, version uint32, attempt int) (*repl.Run, error) {
	if err := checkKeyID(keyID); err != nil {
		return nil, err
	}
	if !w.bundle().HasRegion(dst) {
		return nil, badRequest("region %q is not in partition %q", dst, w.bundle().Partition())
	}
	if dst == w.cfg.Region {
		return nil, badRequest("cannot replicate key %s to its own region %s", keyID, dst)
	}
	key, keyRev, err := w.loadKeyRev(ctx, keyID)
	if err != nil {
		return nil, err
	}
	cfg := w.core()
	r, rerr := repl.CheckStart(key, dst, cfg)
	if rerr != nil {
		return nil, rerr
	}
	if run := w.activeRun(ctx, r); run != nil {
		// Nudge the run along: re-publishing is de-duplicated.
		if err := w.publish(ctx, run); err != nil {
			return nil, err
		}
		return run, nil
	}
	if version, err = repl.StartVersion(key, dst, version); err != nil {
		return nil, err
	}
	if version == 0 {
		// The replica holds every version: answer with its last run.
		if existing, _, err := getJSON[repl.Run](ctx, w.res.Repl, r.ReplicationID); err == nil {
			return existing, nil
		}
		return nil, conflict("key %s: replica in %s holds every version, but its last run %q is gone", keyID, dst, r.ReplicationID)
	}

	now := w.cfg.Now()
	rec, m := repl.Start(key, dst, version, attempt, messages.NewID(), w.replicaPolicy(key, dst), cfg, now)
	// Ordering (exec.go): the pending entry, written while the init is
	// signed, and the sealed init both come before the run is stored.
	pending := w.markPendingAsync(ctx, rec.ID)
	if err := w.sealRun(rec, m); err != nil {
		<-pending
		return nil, err
	}
	if err := <-pending; err != nil {
		return nil, err
	}
	if err := w.createRun(ctx, rec); err != nil {
		return nil, fmt.Errorf("store replication: %w", err)
	}
	var winner string
	// From the record read above (no second read unless another writer
	// came in between); key is not used after this.
	_, err = w.updateKeyFrom(ctx, keyID, key, keyRev, func(k *repl.Key) (bool, error) {
		winner = ""
		r, _ := k.Replica(dst)
		other := r.ReplicationID != "" && r.ReplicationID != rec.ID && w.activeRun(ctx, r) != nil
		lost, rerr := repl.AttachRun(k, rec, other, cfg, now)
		switch {
		case rerr != nil:
			return false, rerr
		case lost:
			winner = r.ReplicationID
			return false, nil
		}
		return true, nil
	})
	if err != nil || winner != "" {
		w.runs.drop(rec.ID)
		_ = w.res.Repl.Delete(ctx, rec.ID)
		_ = w.clearPending(ctx, rec.ID)
	}
	if err != nil {
		return nil, err
	}
	if winner != "" {
		other, _, err := getJSON[repl.Run](ctx, w.res.Repl, winner)
		if err != nil {
			return nil, err
		}
		return other, nil
	}
	if err := w.publish(ctx, rec); err != nil {
		return nil, err
	}
	w.event(ctx, api.Event{Type: api.EventReplicationStarted, KeyID: keyID, ReplicationID: rec.ID, Peer: dst, Version: version})
	w.log.Info("replication started", "replication_id", rec.ID, "key_id", keyID, "dst", dst, "version", version, "attempt", attempt)
	return rec, nil
}

// onOffer (source): wrap K for the destination's RAKB.
func (w *Worker) onOffer(ctx context.Context, env *messages.Envelope) (outcome, error) {
	rec, rev, v, err := w.runFor(ctx, env)
	if err != nil || v.Kind != repl.Fresh {
		return w.answerRun(ctx, rec, v, err)
	}
	cfg := w.core()
	op, ref := repl.OnOffer(rec, env, cfg, w.cfg.Now())
	if ref != nil {
		return accepted, ref
	}
	var res *hsmsvc.WrapResult
	err = w.hsmOp("wrap_for_peer", func() (err error) {
		res, err = w.cfg.HSM.WrapForPeer(ctx, hsmsvc.WrapRequest{PeerPublicKey: op.PeerKey, Context: hsmsvc.KDFContext(op.KDF)})
		return err
	})
	if err != nil {
		return accepted, fmt.Errorf("wrap for %s: %w", rec.Peer, err)
	}
	next, reply := repl.AfterWrap(rec, env, res.RAKA, res.Wrapped, cfg, w.cfg.Now())
	if err := w.sealRun(next, reply); err != nil {
		return accepted, err
	}
	err = w.hsmOp("key_confirmation", func() (err error) {
		next.ExpectedKC, err = w.cfg.HSM.KeyConfirmation(ctx, hsmsvc.KeyRef(op.Ref), next.Transcript())
		return err
	})
	if err != nil {
		return accepted, fmt.Errorf("key confirmation: %w", err)
	}
	next.UpdatedAt = w.cfg.Now()
	return w.writeAndSend(ctx, env, next, rev)
}

// onReceipt (source): check the key confirmation and end the run.
func (w *Worker) onReceipt(ctx context.Context, env *messages.Envelope) (outcome, error) {
	rec, rev, v, err := w.runFor(ctx, env)
	if err == nil && v.Kind == repl.Redelivery {
		// Redelivered: finish what may have been cut short after the run
		// was written (all of it is idempotent).
		if err := w.followUp(ctx, rec); err != nil {
			return accepted, err
		}
		return duplicate, nil
	}
	if err != nil || v.Kind != repl.Fresh {
		return w.answerRun(ctx, rec, v, err)
	}
	late := repl.LateReceiptPossible(rec)
	next, then, ref := repl.OnReceipt(rec, env, w.cfg.Now())
	switch {
	case ref != nil:
		return accepted, ref
	case then == repl.ReceiptIgnore:
		return duplicate, nil // the run already ended FAILED; nothing to add
	}
	if o, err := w.writeRun(ctx, env, next, rev); err != nil || o == duplicate {
		return o, err
	}
	if then == repl.ReceiptRetry {
		// The destination lost its agreement key: a fresh run, as after a
		// timeout. The pending entry stays until it is started (the
		// sweeper retries it after a crash here).
		w.finish(ctx, next)
		if err := w.retryOrGiveUp(ctx, next); err != nil {
			w.log.Warn("replication not retried; the sweeper will", "replication_id", next.ID, "err", err)
			return accepted, nil
		}
		if err := w.clearPending(ctx, next.ID); err != nil {
			w.log.Warn("pending index not cleared; the sweeper will", "replication_id", next.ID, "err", err)
		}
		return accepted, nil
	}
	// From here on the run's pending entry stays until its follow-up is
	// done (or due, in the key's own entry): the sweeper finishes what a
	// crash or an outage cuts short (followUp).
	key, activated, err := w.recordReceipt(ctx, next)
	if err != nil {
		return accepted, err
	}
	if late && next.State == repl.Completed {
		w.log.Info("late receipt completed a timed-out run", "replication_id", rec.ID)
	}
	w.finish(ctx, next)
	if err := w.afterReceipt(ctx, key, next, activated); err != nil {
		w.log.Warn("replication follow-up not done; the sweeper will", "replication_id", next.ID, "err", err)
		return accepted, nil
	}
	if err := w.clearPending(ctx, next.ID); err != nil {
		w.log.Warn("pending index not cleared; the sweeper will", "replication_id", next.ID, "err", err)
	}
	return accepted, nil
}

// followUp repeats, idempotently, what ends a source run after its
// receipt: record it in the key, then afterReceipt. The sweeper calls it
// for ended runs still in the pending index, and a redelivered receipt
// calls it too.
func (w *Worker) followUp(ctx context.Context, run *repl.Run) error {
	if repl.Retryable(run) {
		return w.retryOrGiveUp(ctx, run)
	}
	key, activated, err := w.recordReceipt(ctx, run)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil // the key is gone
	}
	if err != nil {
		return err
	}
	return w.afterReceipt(ctx, key, run, activated)
}

// recordReceipt writes a run's outcome into the primary's key record
// (repl.RecordReceipt, compare-and-set).
func (w *Worker) recordReceipt(ctx context.Context, run *repl.Run) (*repl.Key, uint32, error) {
	now := w.cfg.Now()
	var activated uint32
	key, err := w.updateKey(ctx, run.KeyID, func(k *repl.Key) (bool, error) {
		var changed bool
		activated, changed = repl.RecordReceipt(k, run, now)
		return changed, nil
	})
	return key, activated, err
}

// afterReceipt does what a recorded receipt leads to (repl.AfterReceipt):
// announce a version that became current, and copy the next version the
// replica lacks. It first records the key in the pending index if anything
// is left to do, so that the sweeper finishes it if this worker stops
// here; it fails only if that record cannot be written.
func (w *Worker) afterReceipt(ctx context.Context, key *repl.Key, run *repl.Run, activated uint32) error {
	if key == nil {
		return nil
	}
	sync, next := repl.AfterReceipt(key, run, activated)
	if sync || next {
		if err := w.markKeyPending(ctx, key.KeyID); err != nil {
			return err
		}
	}
	if activated != 0 {
		w.event(ctx, api.Event{Type: api.EventVersionActivated, KeyID: key.KeyID, Version: activated, Regions: key.AllRegions()})
		w.log.Info("version activated", "key_id", key.KeyID, "version", activated)
	}
	if sync {
		w.syncReplicas(ctx, key.KeyID)
	}
	if next {
		if _, err := w.startRun(ctx, key.KeyID, run.Peer, 0, 1); err != nil {
			w.log.Warn("next version not started; the sweeper will", "key_id", key.KeyID, "dst", run.Peer, "err", err)
		}
	}
	return nil
}
