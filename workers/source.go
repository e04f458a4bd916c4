package workers

import (
	"bytes"
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"slices"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/repl"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/nats-io/nats.go/jetstream"
)

// This file is the source role of the replication state machine
// (docs/PROTOCOL.md; the destination role is in destination.go):
//
//	source A                                destination B
//	startReplication: INIT_SENT   ─init─▶   onInit: make RAKB, OFFER_SENT
//	onOffer: wrap K, MATERIAL_SENT ◀─offer─
//	                              ─material─▶ onMaterial: unwrap, COMPLETED
//	onReceipt: compare key        ◀─receipt─
//	confirmation, COMPLETED/FAILED
//
// Each handler first checks that the message fits the run's state; a
// message that the run has already consumed (same digest) makes the handler
// re-publish the reply it stored, so redeliveries never create new keys.
// State is written (compare-and-set) before the reply is published.
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
	if key.Role != repl.Primary {
		return nil, badRequest("key %s is a replica in %s; replicate it from its primary region %s", keyID, w.cfg.Region, key.PrimaryRegion)
	}
	switch key.KeyState {
	case repl.KeyUpdating:
		return nil, conflict("key %s is handing its primary role over to %s; replicate it from there when done", keyID, key.PendingPrimary)
	case repl.KeyPendingDeletion:
		return nil, conflict("key %s is pending deletion in %s", keyID, w.cfg.Region)
	}
	r, known := key.Replica(dst)
	if known && r.State == repl.ReplicaPendingDeletion {
		return nil, conflict("the replica of key %s in %s is pending deletion; cancel the deletion there first", keyID, dst)
	}
	if run := w.activeRun(ctx, r); run != nil {
		// Nudge the run along: re-publishing is de-duplicated.
		if err := w.publish(ctx, run); err != nil {
			return nil, err
		}
		return run, nil
	}
	if version == 0 {
		missing := key.Missing(dst)
		if len(missing) == 0 {
			// The replica holds every version: answer with its last run.
			if existing, _, err := getJSON[repl.Run](ctx, w.res.Repl, r.ReplicationID); err == nil {
				return existing, nil
			}
			return nil, conflict("key %s: replica in %s holds every version, but its last run %q is gone", keyID, dst, r.ReplicationID)
		}
		version = missing[0]
	}
	if key.Version(version) == nil {
		return nil, fmt.Errorf("key %s has no version %d", keyID, version)
	}

	now := w.cfg.Now()
	rec := &repl.Run{
		ID: messages.NewID(), Role: repl.Source, KeyID: keyID, Version: version,
		Peer: dst, State: repl.InitSent, KeySpec: key.KeySpec, KeyUsage: key.KeyUsage,
		PrimaryRegion: w.cfg.Region, Description: key.Description,
		CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(w.cfg.ReplicationTTL), Attempt: attempt,
		Epoch: key.Epoch, WasCurrent: version == key.CurrentVersion,
	}
	// The pending entry is written while the init is signed; both are
	// done before the run is stored.
	pending := w.markPendingAsync(ctx, rec.ID)
	m := w.newMessage(messages.TypeInit, rec.ID, dst)
	m.Init = &messages.Init{
		KeyID: keyID, KeySpec: key.KeySpec, KeyUsage: key.KeyUsage,
		Version: version, PrimaryRegion: w.cfg.Region, Policy: w.replicaPolicy(key, dst),
	}
	if rec.InitDigest, rec.SrcKID, err = w.seal(rec, m); err != nil {
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
	_, err = w.updateKeyFrom(ctx, keyID, key, keyRev, func(k *repl.Key) error {
		// Checked again on the record written: a hand-over or a deletion
		// may have begun since the read above.
		if k.Role != repl.Primary || k.KeyState != repl.KeyEnabled {
			return conflict("key %s is %s in %s (%s) now; no replication starts", keyID, k.KeyState, w.cfg.Region, k.Role)
		}
		r, _ := k.Replica(dst)
		if r.State == repl.ReplicaPendingDeletion {
			return conflict("the replica of key %s in %s is pending deletion; cancel the deletion there first", keyID, dst)
		}
		if r.ReplicationID != "" && r.ReplicationID != rec.ID {
			// Another request started a run between our read and now.
			if other := w.activeRun(ctx, r); other != nil {
				winner = other.ID
				return errNoChange
			}
		}
		state := k.ReplicaState(dst, r.State)
		k.SetReplica(repl.Replica{
			Region: dst, State: state, ReplicationID: rec.ID, SyncedEpoch: r.SyncedEpoch,
			StatusSeq: r.StatusSeq, DeletionDate: r.DeletionDate, UpdatedAt: now,
		})
		k.UpdatedAt = now
		return nil
	})
	if err != nil {
		w.runs.drop(rec.ID)
		_ = w.res.Repl.Delete(ctx, rec.ID)
		_ = w.clearPending(ctx, rec.ID)
		return nil, err
	}
	if winner != "" {
		w.runs.drop(rec.ID)
		_ = w.res.Repl.Delete(ctx, rec.ID)
		_ = w.clearPending(ctx, rec.ID)
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
func (w *Worker) onOffer(ctx context.Context, env *messages.Envelope) error {
	m := &env.Message
	rec, rev, err := w.runFor(ctx, m, repl.Source)
	if err != nil {
		return err
	}
	if rec.State != repl.InitSent {
		if bytes.Equal(rec.OfferDigest, env.Digest) {
			return w.republish(ctx, rec)
		}
		return checkRunMsg(m, env.Digest, rec.OfferMsgID, rec.OfferDigest,
			refuse(reasonStateMismatch, "offer for replication %s in state %s", rec.ID, rec.State))
	}
	if !bytes.Equal(m.Offer.InitDigest, rec.InitDigest) {
		return refuse(reasonStateMismatch, "offer answers another init")
	}
	if w.expired(rec) {
		return refuse(reasonRunExpired, "replication %s expired", rec.ID)
	}
	kctx := hsmsvc.KDFContext{
		Partition: w.bundle().Partition(), SrcRegion: w.cfg.Region, DstRegion: rec.Peer,
		SrcKID: rec.SrcKID, DstKID: env.KID, RAKB: m.Offer.RAKB, ReplicationID: rec.ID,
		KeyID: rec.KeyID, Version: rec.Version, InitDigest: rec.InitDigest, OfferDigest: env.Digest,
	}
	var res *hsmsvc.WrapResult
	err = w.hsmOp("wrap_for_peer", func() (err error) {
		res, err = w.cfg.HSM.WrapForPeer(ctx, hsmsvc.WrapRequest{PeerPublicKey: m.Offer.RAKB, Context: kctx})
		return err
	})
	if err != nil {
		return fmt.Errorf("wrap for %s: %w", rec.Peer, err)
	}
	reply := w.newMessage(messages.TypeMaterial, rec.ID, rec.Peer)
	reply.Material = &messages.Material{
		OfferDigest: env.Digest, RAKA: res.RAKA, WrappedKey: res.Wrapped,
		Properties: messages.Properties{KeySpec: rec.KeySpec, KeyUsage: rec.KeyUsage, Description: rec.Description},
	}
	next := *rec
	next.State = repl.MaterialSent
	next.OfferDigest, next.OfferMsgID = env.Digest, m.MsgID
	next.DstKID = env.KID
	if next.MaterialDigest, _, err = w.seal(&next, reply); err != nil {
		return err
	}
	transcript := messages.TranscriptDigest(rec.InitDigest, env.Digest, next.MaterialDigest)
	err = w.hsmOp("key_confirmation", func() (err error) {
		next.ExpectedKC, err = w.cfg.HSM.KeyConfirmation(ctx, hsmsvc.KeyRef{KeyID: rec.KeyID, Version: rec.Version}, transcript)
		return err
	})
	if err != nil {
		return fmt.Errorf("key confirmation: %w", err)
	}
	next.UpdatedAt = w.cfg.Now()
	if err := w.casRun(ctx, &next, rev); err != nil {
		return w.lostRace(ctx, m, env.Digest, err, func(o *repl.Run) []byte { return o.OfferDigest })
	}
	return w.publish(ctx, &next)
}

// onReceipt (source): check the key confirmation and end the run.
func (w *Worker) onReceipt(ctx context.Context, env *messages.Envelope) error {
	m := &env.Message
	rec, rev, err := w.runFor(ctx, m, repl.Source)
	if err != nil {
		return err
	}
	// A receipt may arrive after the sweeper gave up on the run: it still
	// proves (by key confirmation) whether the replica exists.
	late := rec.State == repl.Failed && rec.TimedOut && len(rec.MaterialDigest) > 0
	if rec.State != repl.MaterialSent && !late {
		if bytes.Equal(rec.ReceiptDigest, env.Digest) {
			// Redelivered: finish what may have been cut short after the
			// run was written (all of it is idempotent).
			if err := w.followUp(ctx, rec); err != nil {
				return err
			}
			return errDuplicate
		}
		return checkRunMsg(m, env.Digest, rec.ReceiptMsgID, rec.ReceiptDigest,
			refuse(reasonStateMismatch, "receipt for replication %s in state %s", rec.ID, rec.State))
	}
	if !bytes.Equal(m.Receipt.MaterialDigest, rec.MaterialDigest) {
		return refuse(reasonStateMismatch, "receipt answers another material")
	}
	next := *rec
	now := w.cfg.Now()
	next.Reason, next.TimedOut = "", false
	next.ReceiptDigest, next.ReceiptMsgID = env.Digest, m.MsgID
	next.UpdatedAt = now
	next.CompletedAt = &now
	next.LastSent, next.LastSentSubject, next.LastSentMsgID = nil, "", ""
	switch {
	case m.Receipt.Status == messages.StatusAgreementKeyLost:
		next.State, next.Reason = repl.Failed, reasonAgreementKeyLost
	case m.Receipt.Status != messages.StatusOK:
		next.State, next.Reason = repl.Failed, "destination reported "+m.Receipt.Status
	case !hmac.Equal(m.Receipt.KeyConfirmation, rec.ExpectedKC):
		next.State, next.Reason = repl.Failed, "key confirmation mismatch"
	default:
		next.State = repl.Completed
	}
	if late && next.State != repl.Completed {
		return errDuplicate // the run already ended FAILED; nothing to add
	}
	if err := w.casRun(ctx, &next, rev); err != nil {
		return w.lostRace(ctx, m, env.Digest, err, func(o *repl.Run) []byte { return o.ReceiptDigest })
	}
	if retryable(&next) {
		// The destination lost its agreement key: a fresh run, as after a
		// timeout. The pending entry stays until it is started (the
		// sweeper retries it after a crash here).
		w.finish(ctx, &next)
		if err := w.retryOrGiveUp(ctx, &next); err != nil {
			w.log.Warn("replication not retried; the sweeper will", "replication_id", next.ID, "err", err)
			return nil
		}
		if err := w.clearPending(ctx, next.ID); err != nil {
			w.log.Warn("pending index not cleared; the sweeper will", "replication_id", next.ID, "err", err)
		}
		return nil
	}
	// From here on the run's pending entry stays until its follow-up is
	// done (or due, in the key's own entry): the sweeper finishes what a
	// crash or an outage cuts short (followUp).
	key, activated, err := w.recordReceipt(ctx, &next)
	if err != nil {
		return err
	}
	if late && next.State == repl.Completed {
		w.log.Info("late receipt completed a timed-out run", "replication_id", rec.ID)
	}
	w.finish(ctx, &next)
	if err := w.afterReceipt(ctx, key, &next, activated); err != nil {
		w.log.Warn("replication follow-up not done; the sweeper will", "replication_id", next.ID, "err", err)
		return nil
	}
	if err := w.clearPending(ctx, next.ID); err != nil {
		w.log.Warn("pending index not cleared; the sweeper will", "replication_id", next.ID, "err", err)
	}
	return nil
}

// reasonAgreementKeyLost is a source run's reason when its destination
// answered agreement_key_lost.
const reasonAgreementKeyLost = "destination reported " + messages.StatusAgreementKeyLost

// retryable reports whether a source run ended FAILED in a way a fresh run
// may cure: timed out, or its destination lost its agreement key. Such a
// run is followed by retryOrGiveUp, not by recording the failure.
func retryable(run *repl.Run) bool {
	return run.State == repl.Failed && (run.TimedOut || run.Reason == reasonAgreementKeyLost)
}

// followUp repeats, idempotently, what ends a source run after its
// receipt: record it in the key, then afterReceipt. The sweeper calls it
// for ended runs still in the pending index, and a redelivered receipt
// calls it too.
func (w *Worker) followUp(ctx context.Context, run *repl.Run) error {
	if retryable(run) {
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

// recordReceipt writes a run's outcome into the primary's key record: the
// watermark and the replica's state, and activates the staged version if
// this was the last confirmation it waited for.
func (w *Worker) recordReceipt(ctx context.Context, run *repl.Run) (*repl.Key, uint32, error) {
	now := w.cfg.Now()
	var activated uint32
	key, err := w.updateKey(ctx, run.KeyID, func(k *repl.Key) error {
		activated = 0
		r, ok := k.Replica(run.Peer)
		if !ok {
			return errNoChange // the replica was deleted meanwhile
		}
		if run.State == repl.Completed {
			if k.Holds(run.Peer, run.Version) {
				// Recorded already (by this run, redelivered, or a later
				// one), with the replica's state and any activation in
				// the same write: nothing to write again.
				return errNoChange
			}
			first := !k.HoldsAny(run.Peer)
			k.MarkHeld(run.Peer, run.Version)
			// A sync it could not apply for lack of this version may be
			// sent again now, without waiting for the resend timer.
			delete(k.SyncSent, run.Peer)
			if first && run.WasCurrent && run.Epoch == 1 {
				// The run that created the replica gave it the state of
				// epoch 1 (the creating primary, version 1, the
				// description): no sync needed. A key that changed before
				// it had this replica is synced (needsSync).
				r.SyncedEpoch = max(r.SyncedEpoch, run.Epoch)
			}
			r.State = k.ReplicaState(run.Peer, r.State)
			r.Reason = ""
			activated = k.TryActivate(now)
		} else {
			if r.ReplicationID != run.ID || k.Holds(run.Peer, run.Version) {
				return errNoChange
			}
			r.State, r.Reason = repl.ReplicaFailed, run.Reason
		}
		r.ReplicationID = run.ID
		r.UpdatedAt = now
		k.SetReplica(r)
		k.UpdatedAt = now
		return nil
	})
	return key, activated, err
}

// afterReceipt does what a recorded receipt may lead to: announce a
// version that became current, and copy the next version the replica
// lacks. It first records the key in the pending index if anything is
// left to do, so that the sweeper finishes it if this worker stops here;
// it fails only if that record cannot be written.
func (w *Worker) afterReceipt(ctx context.Context, key *repl.Key, run *repl.Run, activated uint32) error {
	if key == nil {
		return nil
	}
	sync := activated != 0 || slices.ContainsFunc(key.Replicas, func(r repl.Replica) bool { return key.NeedsSync(r) })
	next := run.State == repl.Completed && len(key.Missing(run.Peer)) > 0
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
