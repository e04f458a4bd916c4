package workers

import (
	"bytes"
	"context"
	"crypto/hmac"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// This file is the replication state machine (docs/PROTOCOL.md):
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

// apiError is an error reply of the request API.
type apiError struct {
	Code   string
	Detail string
}

func (e *apiError) Error() string { return e.Detail }

func badRequest(format string, args ...any) error {
	return &apiError{Code: api.CodeBadRequest, Detail: fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) error {
	return &apiError{Code: api.CodeNotFound, Detail: fmt.Sprintf(format, args...)}
}

func conflict(format string, args ...any) error {
	return &apiError{Code: api.CodeConflict, Detail: fmt.Sprintf(format, args...)}
}

// newMessage fills the header of a message this region sends.
func (w *Worker) newMessage(t messages.Type, replicationID, dst string) *messages.Message {
	now := w.cfg.Now()
	return &messages.Message{Header: messages.Header{
		V:             messages.Version,
		Type:          t,
		MsgID:         messages.NewID(),
		ReplicationID: replicationID,
		Partition:     w.bundle().Partition(),
		Src:           w.cfg.Region,
		Dst:           dst,
		SentAt:        now.UnixMilli(),
		ExpiresAt:     now.Add(w.cfg.MessageTTL).UnixMilli(),
	}}
}

// seal signs m and records it as the run's last message; it returns the
// message's digest and the kid of the RSK that signed it.
func (w *Worker) seal(rec *replication, m *messages.Message) (digest, kid []byte, err error) {
	raw, kid, err := w.sign(m)
	if err != nil {
		return nil, nil, err
	}
	rec.LastSent = raw
	rec.LastSentSubject = messages.OutboxSubject(w.cfg.Region, m.Dst, m.Type)
	rec.LastSentMsgID = m.MsgID
	return messages.Digest(raw), kid, nil
}

// sign seals m with the region's current RSK.
func (w *Worker) sign(m *messages.Message) (raw, kid []byte, err error) {
	signer, kid := w.rsk()
	err = w.hsmOp("sign", func() (err error) {
		raw, err = messages.Seal(m, signer)
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("seal %s: %w", m.Type, err)
	}
	return raw, kid, nil
}

// publish sends the run's last message to the outbox. Nats-Msg-Id is the
// msg_id, so publishing it again is harmless.
func (w *Worker) publish(ctx context.Context, rec *replication) error {
	if len(rec.LastSent) == 0 {
		return nil
	}
	msg := nats.NewMsg(rec.LastSentSubject)
	msg.Data = rec.LastSent
	if _, err := w.js.PublishMsg(ctx, msg, jetstream.WithMsgID(rec.LastSentMsgID)); err != nil {
		return fmt.Errorf("publish %s: %w", rec.LastSentSubject, err)
	}
	return nil
}

// republish answers a duplicate with the stored reply.
func (w *Worker) republish(ctx context.Context, rec *replication) error {
	if err := w.publish(ctx, rec); err != nil {
		return err
	}
	return errDuplicate
}

func (w *Worker) event(ctx context.Context, ev api.Event) {
	ev.Region = w.cfg.Region
	if ev.Time.IsZero() {
		ev.Time = w.cfg.Now()
	}
	ev.Time = ev.Time.UTC()
	b, err := json.Marshal(ev)
	if err != nil {
		return
	}
	if _, err := w.js.Publish(ctx, layout.EventSubject(w.cfg.Region, ev.Type), b); err != nil {
		w.log.Warn("audit event not published", "event", ev.Type, "err", err)
	}
}

// startReplication begins (or finds) the run that copies keyID to dst.
// Asking again for a replica that exists or is being created returns that
// run: the call is idempotent.
func (w *Worker) startReplication(ctx context.Context, keyID, dst string) (*replication, error) {
	return w.startRun(ctx, keyID, dst, 1)
}

// startRun is startReplication for a given attempt number (the sweeper
// starts attempts after the first).
func (w *Worker) startRun(ctx context.Context, keyID, dst string, attempt int) (*replication, error) {
	if !messages.IsKeyID(keyID) {
		return nil, badRequest("invalid key id %q", keyID)
	}
	if !w.bundle().HasRegion(dst) {
		return nil, badRequest("region %q is not in partition %q", dst, w.bundle().Partition())
	}
	if dst == w.cfg.Region {
		return nil, badRequest("cannot replicate key %s to its own region %s", keyID, dst)
	}
	key, _, err := getJSON[api.Key](ctx, w.res.Keys, keyID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, notFound("key %s not found in region %s", keyID, w.cfg.Region)
	}
	if err != nil {
		return nil, err
	}
	if key.Role != api.RolePrimary {
		return nil, badRequest("key %s is a replica in %s; replicate it from its primary region %s", keyID, w.cfg.Region, key.PrimaryRegion)
	}
	if r, ok := findReplica(key, dst); ok && r.ReplicationID != "" && r.State != api.ReplicaFailed {
		existing, _, err := getJSON[replication](ctx, w.res.Repl, r.ReplicationID)
		if err == nil && (existing.State == api.StateCompleted || !existing.ended() && !w.expired(existing)) {
			if !existing.ended() {
				// Nudge the run along: re-publishing is de-duplicated.
				if err := w.publish(ctx, existing); err != nil {
					return nil, err
				}
			}
			return existing, nil
		}
	}

	now := w.cfg.Now()
	rec := &replication{
		ID: messages.NewID(), Role: roleSource, KeyID: keyID, Version: key.CurrentVersion,
		Peer: dst, State: api.StateInitSent, KeySpec: key.KeySpec, KeyUsage: key.KeyUsage,
		PrimaryRegion: w.cfg.Region, Description: key.Description,
		CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(w.cfg.ReplicationTTL), Attempt: attempt,
	}
	m := w.newMessage(messages.TypeInit, rec.ID, dst)
	m.Init = &messages.Init{
		KeyID: keyID, KeySpec: key.KeySpec, KeyUsage: key.KeyUsage,
		Version: key.CurrentVersion, PrimaryRegion: w.cfg.Region,
	}
	if rec.InitDigest, rec.SrcKID, err = w.seal(rec, m); err != nil {
		return nil, err
	}
	if err := w.markPending(ctx, rec.ID); err != nil {
		return nil, err
	}
	if _, err := createJSON(ctx, w.res.Repl, rec.ID, rec); err != nil {
		return nil, fmt.Errorf("store replication: %w", err)
	}
	var winner string
	_, err = updateJSON(ctx, w.res.Keys, keyID, func(k *api.Key) error {
		if r, ok := findReplica(k, dst); ok && r.State == api.ReplicaCreating && r.ReplicationID != rec.ID {
			// Another request started a run between our read and now.
			if other, _, err := getJSON[replication](ctx, w.res.Repl, r.ReplicationID); err == nil && !other.ended() && !w.expired(other) {
				winner = r.ReplicationID
				return errNoChange
			}
		}
		setReplica(k, api.Replica{Region: dst, State: api.ReplicaCreating, ReplicationID: rec.ID, UpdatedAt: now})
		k.UpdatedAt = now
		return nil
	})
	if err != nil {
		return nil, err
	}
	if winner != "" {
		_ = w.res.Repl.Delete(ctx, rec.ID)
		_ = w.clearPending(ctx, rec.ID)
		other, _, err := getJSON[replication](ctx, w.res.Repl, winner)
		if err != nil {
			return nil, err
		}
		return other, nil
	}
	if err := w.publish(ctx, rec); err != nil {
		return nil, err
	}
	w.event(ctx, api.Event{Type: api.EventReplicationStarted, KeyID: keyID, ReplicationID: rec.ID, Peer: dst})
	w.log.Info("replication started", "replication_id", rec.ID, "key_id", keyID, "dst", dst, "attempt", attempt)
	return rec, nil
}

func (w *Worker) expired(r *replication) bool { return w.cfg.Now().After(r.ExpiresAt) }

// onInit (destination): make RAKB and answer with an offer.
func (w *Worker) onInit(ctx context.Context, env *messages.Envelope) error {
	m := &env.Message
	in := m.Init
	if in.PrimaryRegion != m.Src {
		return refuse(reasonNotPrimary, "init from %s names primary %s", m.Src, in.PrimaryRegion)
	}
	if rec, _, err := getJSON[replication](ctx, w.res.Repl, m.ReplicationID); err == nil {
		if rec.Role == roleDestination && bytes.Equal(rec.InitDigest, env.Digest) {
			return w.republish(ctx, rec)
		}
		return refuse(reasonStateMismatch, "replication %s already exists with another init", m.ReplicationID)
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return err
	}
	// A replica that is already here is answered like a new one: the HSM
	// reports the key as present at unwrap time, and the key confirmation
	// in the receipt lets the source check that it is the same key (this is
	// how a source that lost a receipt, or retried, learns of the replica).
	if key, _, err := getJSON[api.Key](ctx, w.res.Keys, in.KeyID); err == nil {
		if key.Role == api.RolePrimary || key.PrimaryRegion != m.Src {
			return refuse(reasonKeyExists, "key %s exists in %s with primary %s", in.KeyID, w.cfg.Region, key.PrimaryRegion)
		}
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return err
	}

	now := w.cfg.Now()
	rec := &replication{
		ID: m.ReplicationID, Role: roleDestination, KeyID: in.KeyID, Version: in.Version,
		Peer: m.Src, State: api.StateOfferSent, KeySpec: in.KeySpec, KeyUsage: in.KeyUsage,
		PrimaryRegion: in.PrimaryRegion, SrcKID: env.KID, InitDigest: env.Digest,
		CreatedAt: m.SentTime(), UpdatedAt: now, ExpiresAt: now.Add(w.cfg.ReplicationTTL),
	}
	err := w.hsmOp("create_agreement_key", func() (err error) {
		rec.RAKB, err = w.cfg.HSM.CreateAgreementKey(ctx, rec.ID, rec.ExpiresAt)
		if errors.Is(err, hsmsvc.ErrExists) {
			// Made before a crash, before any offer was stored or sent:
			// nobody has seen its public key, so replace it.
			if err = w.cfg.HSM.DestroyAgreementKey(ctx, rec.ID); err == nil || errors.Is(err, hsmsvc.ErrNotFound) {
				rec.RAKB, err = w.cfg.HSM.CreateAgreementKey(ctx, rec.ID, rec.ExpiresAt)
			}
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("create rakb: %w", err)
	}
	reply := w.newMessage(messages.TypeOffer, rec.ID, m.Src)
	reply.Offer = &messages.Offer{InitDigest: env.Digest, RAKB: rec.RAKB}
	if rec.OfferDigest, rec.DstKID, err = w.seal(rec, reply); err != nil {
		return err
	}
	if err := w.markPending(ctx, rec.ID); err != nil {
		return err
	}
	if _, err := createJSON(ctx, w.res.Repl, rec.ID, rec); err != nil {
		// Another worker took this init first: keep its RAKB, drop ours.
		_ = w.cfg.HSM.DestroyAgreementKey(ctx, rec.ID)
		if errors.Is(err, jetstream.ErrKeyExists) {
			if other, _, gerr := getJSON[replication](ctx, w.res.Repl, rec.ID); gerr == nil && bytes.Equal(other.InitDigest, env.Digest) {
				return w.republish(ctx, other)
			}
		}
		return fmt.Errorf("store replication: %w", err)
	}
	return w.publish(ctx, rec)
}

// onOffer (source): wrap K for the destination's RAKB.
func (w *Worker) onOffer(ctx context.Context, env *messages.Envelope) error {
	m := &env.Message
	rec, rev, err := w.runFor(ctx, m, roleSource)
	if err != nil {
		return err
	}
	if rec.State != api.StateInitSent {
		if bytes.Equal(rec.OfferDigest, env.Digest) {
			return w.republish(ctx, rec)
		}
		return refuse(reasonStateMismatch, "offer for replication %s in state %s", rec.ID, rec.State)
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
	next.State = api.StateMaterialSent
	next.OfferDigest = env.Digest
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
		return w.lostRace(ctx, m, env.Digest, err, func(o *replication) []byte { return o.OfferDigest })
	}
	return w.publish(ctx, &next)
}

// onMaterial (destination): unwrap K into the HSM and send the receipt.
func (w *Worker) onMaterial(ctx context.Context, env *messages.Envelope) error {
	m := &env.Message
	rec, rev, err := w.runFor(ctx, m, roleDestination)
	if err != nil {
		return err
	}
	if rec.State != api.StateOfferSent {
		if bytes.Equal(rec.MaterialDigest, env.Digest) {
			return w.republish(ctx, rec)
		}
		return refuse(reasonStateMismatch, "material for replication %s in state %s", rec.ID, rec.State)
	}
	if !bytes.Equal(m.Material.OfferDigest, rec.OfferDigest) {
		return refuse(reasonStateMismatch, "material answers another offer")
	}
	ref := hsmsvc.KeyRef{KeyID: rec.KeyID, Version: rec.Version}
	kctx := hsmsvc.KDFContext{
		Partition: w.bundle().Partition(), SrcRegion: rec.Peer, DstRegion: w.cfg.Region,
		SrcKID: rec.SrcKID, DstKID: rec.DstKID, RAKA: m.Material.RAKA, RAKB: rec.RAKB,
		ReplicationID: rec.ID, KeyID: rec.KeyID, Version: rec.Version,
		InitDigest: rec.InitDigest, OfferDigest: rec.OfferDigest,
	}
	status := messages.StatusOK
	err = w.hsmOp("unwrap_from_peer", func() error {
		return w.cfg.HSM.UnwrapFromPeer(ctx, hsmsvc.UnwrapRequest{PeerPublicKey: m.Material.RAKA, Wrapped: m.Material.WrappedKey, Context: kctx})
	})
	switch {
	case err == nil:
	case errors.Is(err, hsmsvc.ErrExists):
		// Unwrapped before a crash: the key confirmation below tells the
		// source whether it is the right key.
	case errors.Is(err, hsmsvc.ErrNotFound):
		// RAKB gone: consumed by an unwrap whose state write was lost, or expired.
		if has, herr := w.cfg.HSM.HasKey(ctx, ref); herr != nil {
			return herr
		} else if !has {
			status = messages.StatusUnwrapFailed
		}
	default:
		w.log.Warn("unwrap failed", "replication_id", rec.ID, "err", err)
		status = messages.StatusUnwrapFailed
	}
	next := *rec
	next.MaterialDigest = env.Digest
	next.UpdatedAt = w.cfg.Now()
	reply := w.newMessage(messages.TypeReceipt, rec.ID, rec.Peer)
	reply.Receipt = &messages.Receipt{MaterialDigest: env.Digest, Status: status}
	if status == messages.StatusOK {
		transcript := messages.TranscriptDigest(rec.InitDigest, rec.OfferDigest, env.Digest)
		err = w.hsmOp("key_confirmation", func() (err error) {
			reply.Receipt.KeyConfirmation, err = w.cfg.HSM.KeyConfirmation(ctx, ref, transcript)
			return err
		})
		if err != nil {
			return fmt.Errorf("key confirmation: %w", err)
		}
		if err := w.storeReplica(ctx, rec, m.Material.Properties); err != nil {
			return err
		}
		next.State = api.StateCompleted
		next.UsableAt = &next.UpdatedAt
		next.CompletedAt = &next.UpdatedAt
	} else {
		next.State = api.StateFailed
		next.Reason = status
	}
	if _, _, err := w.seal(&next, reply); err != nil {
		return err
	}
	if err := w.casRun(ctx, &next, rev); err != nil {
		return w.lostRace(ctx, m, env.Digest, err, func(o *replication) []byte { return o.MaterialDigest })
	}
	if err := w.publish(ctx, &next); err != nil {
		return err
	}
	w.finish(ctx, &next)
	return nil
}

// storeReplica records the replica's metadata once its material is in the HSM.
func (w *Worker) storeReplica(ctx context.Context, rec *replication, props messages.Properties) error {
	now := w.cfg.Now()
	key := &api.Key{
		KeyID: rec.KeyID, Partition: w.bundle().Partition(), Region: w.cfg.Region,
		Role: api.RoleReplica, PrimaryRegion: rec.PrimaryRegion, KeySpec: props.KeySpec,
		KeyUsage: props.KeyUsage, Description: props.Description, Enabled: true,
		Versions: []uint32{rec.Version}, CurrentVersion: rec.Version,
		CreatedAt: now, UpdatedAt: now, ReplicatedFrom: rec.ID, UsableAt: &now,
	}
	_, err := createJSON(ctx, w.res.Keys, rec.KeyID, key)
	if errors.Is(err, jetstream.ErrKeyExists) {
		_, err = updateJSON(ctx, w.res.Keys, rec.KeyID, func(k *api.Key) error {
			if slices.Contains(k.Versions, rec.Version) {
				return errNoChange
			}
			k.Versions = append(k.Versions, rec.Version)
			k.CurrentVersion = max(k.CurrentVersion, rec.Version)
			k.UpdatedAt = now
			return nil
		})
	}
	if err != nil {
		return fmt.Errorf("store replica metadata: %w", err)
	}
	return nil
}

// onReceipt (source): check the key confirmation and end the run.
func (w *Worker) onReceipt(ctx context.Context, env *messages.Envelope) error {
	m := &env.Message
	rec, rev, err := w.runFor(ctx, m, roleSource)
	if err != nil {
		return err
	}
	// A receipt may arrive after the sweeper gave up on the run: it still
	// proves (by key confirmation) whether the replica exists.
	late := rec.State == api.StateFailed && rec.TimedOut && len(rec.MaterialDigest) > 0
	if rec.State != api.StateMaterialSent && !late {
		if bytes.Equal(rec.ReceiptDigest, env.Digest) {
			return errDuplicate
		}
		return refuse(reasonStateMismatch, "receipt for replication %s in state %s", rec.ID, rec.State)
	}
	if !bytes.Equal(m.Receipt.MaterialDigest, rec.MaterialDigest) {
		return refuse(reasonStateMismatch, "receipt answers another material")
	}
	next := *rec
	now := w.cfg.Now()
	next.Reason, next.TimedOut = "", false
	next.ReceiptDigest = env.Digest
	next.UpdatedAt = now
	next.CompletedAt = &now
	next.LastSent, next.LastSentSubject, next.LastSentMsgID = nil, "", ""
	switch {
	case m.Receipt.Status != messages.StatusOK:
		next.State, next.Reason = api.StateFailed, "destination reported "+m.Receipt.Status
	case !hmac.Equal(m.Receipt.KeyConfirmation, rec.ExpectedKC):
		next.State, next.Reason = api.StateFailed, "key confirmation mismatch"
	default:
		next.State = api.StateCompleted
	}
	if late && next.State != api.StateCompleted {
		return errDuplicate // the run already ended FAILED; nothing to add
	}
	if err := w.casRun(ctx, &next, rev); err != nil {
		return w.lostRace(ctx, m, env.Digest, err, func(o *replication) []byte { return o.ReceiptDigest })
	}
	replicaState := api.ReplicaEnabled
	if next.State == api.StateFailed {
		replicaState = api.ReplicaFailed
	}
	_, err = updateJSON(ctx, w.res.Keys, rec.KeyID, func(k *api.Key) error {
		if r, ok := findReplica(k, rec.Peer); ok && r.ReplicationID != rec.ID && r.State == api.ReplicaEnabled {
			return errNoChange // a later run already enabled it
		}
		setReplica(k, api.Replica{Region: rec.Peer, State: replicaState, ReplicationID: rec.ID, Reason: next.Reason, UpdatedAt: now})
		k.UpdatedAt = now
		return nil
	})
	if err != nil {
		return err
	}
	if late && next.State == api.StateCompleted {
		w.log.Info("late receipt completed a timed-out run", "replication_id", rec.ID)
	}
	w.finish(ctx, &next)
	return nil
}

// runFor loads the run a message belongs to and checks role and peer.
func (w *Worker) runFor(ctx context.Context, m *messages.Message, role string) (*replication, uint64, error) {
	rec, rev, err := getJSON[replication](ctx, w.res.Repl, m.ReplicationID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, refuse(reasonUnknownRun, "no replication %s in %s", m.ReplicationID, w.cfg.Region)
	}
	if err != nil {
		return nil, 0, err
	}
	if rec.Role != role {
		return nil, 0, refuse(reasonStateMismatch, "%s for a run where %s is %s", m.Type, w.cfg.Region, rec.Role)
	}
	if rec.Peer != m.Src {
		return nil, 0, refuse(reasonWrongPeer, "%s from %s for a run with %s", m.Type, m.Src, rec.Peer)
	}
	return rec, rev, nil
}

// casRun writes rec if the stored revision is still rev.
func (w *Worker) casRun(ctx context.Context, rec *replication, rev uint64) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	_, err = w.res.Repl.Update(ctx, rec.ID, b, rev)
	return err
}

// lostRace handles a failed compare-and-set: if another worker already
// consumed the same message, answer as a duplicate; otherwise retry later.
func (w *Worker) lostRace(ctx context.Context, m *messages.Message, digest []byte, err error, consumed func(*replication) []byte) error {
	if errors.Is(err, jetstream.ErrKeyExists) {
		if other, _, gerr := getJSON[replication](ctx, w.res.Repl, m.ReplicationID); gerr == nil && bytes.Equal(consumed(other), digest) {
			return w.republish(ctx, other)
		}
	}
	return fmt.Errorf("store replication %s: %w", m.ReplicationID, err)
}

// finish counts, times and announces a run's end in this region.
func (w *Worker) finish(ctx context.Context, rec *replication) {
	if !rec.TimedOut { // the sweeper clears a timed-out run's entry after its follow-up
		if err := w.clearPending(ctx, rec.ID); err != nil {
			w.log.Warn("pending index not cleared; the sweeper will", "replication_id", rec.ID, "err", err)
		}
	}
	elapsed := w.cfg.Now().Sub(rec.CreatedAt).Seconds()
	// The event's time is when the run changed state (for a destination:
	// when the key became usable), not when the event was published.
	ev := api.Event{KeyID: rec.KeyID, ReplicationID: rec.ID, Peer: rec.Peer, Reason: rec.Reason, Time: rec.UpdatedAt}
	if rec.State == api.StateCompleted {
		w.met.replications.WithLabelValues(rec.Role, "completed").Inc()
		w.met.lastCompleted.SetToCurrentTime()
		if rec.Role == roleDestination {
			w.met.duration.WithLabelValues(rec.Role, "usable").Observe(elapsed)
			ev.Type = api.EventReplicaCreated
		} else {
			w.met.duration.WithLabelValues(rec.Role, "confirmed").Observe(elapsed)
			ev.Type = api.EventReplicationCompleted
		}
		w.log.Info("replication completed", "replication_id", rec.ID, "key_id", rec.KeyID, "role", rec.Role, "peer", rec.Peer, "seconds", elapsed)
	} else {
		w.met.replications.WithLabelValues(rec.Role, "failed").Inc()
		ev.Type = api.EventReplicationFailed
		w.log.Warn("replication failed", "replication_id", rec.ID, "key_id", rec.KeyID, "role", rec.Role, "peer", rec.Peer, "reason", rec.Reason)
	}
	w.event(ctx, ev)
}
