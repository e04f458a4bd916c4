package workers

import (
	"bytes"
	"context"
	"crypto/hmac"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

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

// sign seals m with the region's RSK valid at m's sent_at (rskAt).
func (w *Worker) sign(m *messages.Message) (raw, kid []byte, err error) {
	signer, kid := w.rskAt(m.SentTime())
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
// message's SHA-256 (layout.MsgID): publishing the same bytes again is
// harmless.
func (w *Worker) publish(ctx context.Context, rec *replication) error {
	if len(rec.LastSent) == 0 {
		return nil
	}
	msg := nats.NewMsg(rec.LastSentSubject)
	msg.Data = rec.LastSent
	if _, err := w.js.PublishMsg(ctx, msg, jetstream.WithMsgID(layout.MsgID(rec.LastSent))); err != nil {
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
	if ev.Actor == "" {
		ev.Actor = actorFrom(ctx)
	}
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
// run: the call is idempotent. A replica that lacks versions (a new one, or
// one that missed a rotation) gets the next version it lacks.
func (w *Worker) startReplication(ctx context.Context, keyID, dst string) (*replication, error) {
	return w.startRun(ctx, keyID, dst, 0, 1)
}

// replicaPolicy is the policy an init to dst carries for the replica it
// may create there: the one replicate-key asked for, else the key's own in
// this region (docs/AUTHZ.md, "Replicas").
func (w *Worker) replicaPolicy(k *keyRecord, dst string) string {
	if p, ok := k.ReplicaPolicies[dst]; ok {
		return p
	}
	if len(k.Policy) > messages.MaxPolicySize {
		return "" // too long to travel: the destination's default
	}
	return k.Policy
}

// activeRun returns the replica's run in flight, if any.
func (w *Worker) activeRun(ctx context.Context, r api.Replica) *replication {
	if r.ReplicationID == "" {
		return nil
	}
	run, _, err := getJSON[replication](ctx, w.res.Repl, r.ReplicationID)
	if err != nil || run.ended() || w.expired(run) {
		return nil
	}
	return run
}

// startRun starts a run that copies one version of keyID to dst: version,
// or (version 0) the next one dst lacks. attempt numbers the tries for the
// same version (the sweeper starts attempts after the first). One run at a
// time is in flight per replica: while one is, startRun returns it.
func (w *Worker) startRun(ctx context.Context, keyID, dst string, version uint32, attempt int) (*replication, error) {
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
	if key.Role != api.RolePrimary {
		return nil, badRequest("key %s is a replica in %s; replicate it from its primary region %s", keyID, w.cfg.Region, key.PrimaryRegion)
	}
	switch key.KeyState {
	case api.KeyStateUpdating:
		return nil, conflict("key %s is handing its primary role over to %s; replicate it from there when done", keyID, key.PendingPrimary)
	case api.KeyStatePendingDeletion:
		return nil, conflict("key %s is pending deletion in %s", keyID, w.cfg.Region)
	}
	r, known := findReplica(&key.Key, dst)
	if known && r.State == api.ReplicaPendingDeletion {
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
		missing := missingVersions(&key.Key, dst)
		if len(missing) == 0 {
			// The replica holds every version: answer with its last run.
			if existing, _, err := getJSON[replication](ctx, w.res.Repl, r.ReplicationID); err == nil {
				return existing, nil
			}
			return nil, conflict("key %s: replica in %s holds every version, but its last run %q is gone", keyID, dst, r.ReplicationID)
		}
		version = missing[0]
	}
	if versionDetail(&key.Key, version) == nil {
		return nil, fmt.Errorf("key %s has no version %d", keyID, version)
	}

	now := w.cfg.Now()
	rec := &replication{
		ID: messages.NewID(), Role: roleSource, KeyID: keyID, Version: version,
		Peer: dst, State: api.StateInitSent, KeySpec: key.KeySpec, KeyUsage: key.KeyUsage,
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
	_, err = w.updateKeyFrom(ctx, keyID, key, keyRev, func(k *keyRecord) error {
		// Checked again on the record written: a hand-over or a deletion
		// may have begun since the read above.
		if k.Role != api.RolePrimary || k.KeyState != api.KeyStateEnabled {
			return conflict("key %s is %s in %s (%s) now; no replication starts", keyID, k.KeyState, w.cfg.Region, k.Role)
		}
		r, _ := findReplica(&k.Key, dst)
		if r.State == api.ReplicaPendingDeletion {
			return conflict("the replica of key %s in %s is pending deletion; cancel the deletion there first", keyID, dst)
		}
		if r.ReplicationID != "" && r.ReplicationID != rec.ID {
			// Another request started a run between our read and now.
			if other := w.activeRun(ctx, r); other != nil {
				winner = other.ID
				return errNoChange
			}
		}
		state := replicaState(&k.Key, dst, r.State)
		setReplica(&k.Key, api.Replica{
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
		other, _, err := getJSON[replication](ctx, w.res.Repl, winner)
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

func (w *Worker) expired(r *replication) bool { return w.cfg.Now().After(r.ExpiresAt) }

// onInit (destination): make RAKB and answer with an offer.
func (w *Worker) onInit(ctx context.Context, env *messages.Envelope) error {
	m := &env.Message
	in := m.Init
	if in.PrimaryRegion != m.Src {
		return refuse(reasonNotPrimary, "init from %s names primary %s", m.Src, in.PrimaryRegion)
	}
	if err := checkProperties("init", in.KeySpec, in.KeyUsage); err != nil {
		return err
	}
	// The run (a redelivery finds it) and the key (held here already?),
	// read at once: one round trip instead of two.
	var (
		key    *keyRecord
		keyErr error
		read   = make(chan struct{})
	)
	go func() {
		defer close(read)
		key, _, keyErr = getJSON[keyRecord](ctx, w.res.Keys, in.KeyID)
	}()
	rec, _, err := getJSON[replication](ctx, w.res.Repl, m.ReplicationID)
	<-read
	if err == nil {
		if rec.Role == roleDestination && bytes.Equal(rec.InitDigest, env.Digest) {
			return w.republish(ctx, rec)
		}
		return checkRunMsg(m, env.Digest, rec.InitMsgID, rec.InitDigest,
			refuse(reasonStateMismatch, "replication %s already exists with another init", m.ReplicationID))
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return err
	}
	// A replica that is already here is answered like a new one: the HSM
	// reports the key as present at unwrap time, and the key confirmation
	// in the receipt lets the source check that it is the same key (this is
	// how a source that lost a receipt, or retried, learns of the replica).
	if keyErr == nil && !key.Deleted {
		if key.Role == api.RolePrimary || key.PrimaryRegion != m.Src {
			return refuse(reasonKeyExists, "key %s exists in %s with primary %s", in.KeyID, w.cfg.Region, key.PrimaryRegion)
		}
		if key.KeySpec != in.KeySpec || key.KeyUsage != in.KeyUsage {
			return refuse(reasonBadProperties, "init for key %s with key_spec %q, key_usage %q; the replica here is %q, %q", in.KeyID, in.KeySpec, in.KeyUsage, key.KeySpec, key.KeyUsage)
		}
	} else if keyErr != nil && !errors.Is(keyErr, jetstream.ErrKeyNotFound) {
		return keyErr
	}

	now := w.cfg.Now()
	rec = &replication{
		ID: m.ReplicationID, Role: roleDestination, KeyID: in.KeyID, Version: in.Version,
		Peer: m.Src, State: api.StateOfferSent, KeySpec: in.KeySpec, KeyUsage: in.KeyUsage,
		PrimaryRegion: in.PrimaryRegion, SrcKID: env.KID, InitDigest: env.Digest, InitMsgID: m.MsgID,
		CreatedAt: m.SentTime(), UpdatedAt: now, ExpiresAt: now.Add(w.cfg.ReplicationTTL),
		Policy: w.initPolicy(in),
	}
	// The pending entry is also this handler's claim on the init: a second
	// handler of the same init (a copy delivered at the same time, or a
	// redelivery while this one still runs) must not touch our RAKB.
	release, err := w.claimRun(ctx, rec.ID)
	if err != nil {
		return err
	}
	stored := false
	defer func() {
		if !stored {
			release()
		}
	}()
	err = w.hsmOp("create_agreement_key", func() (err error) {
		rec.RAKB, err = w.cfg.HSM.CreateAgreementKey(ctx, rec.ID, rec.ExpiresAt)
		if errors.Is(err, hsmsvc.ErrExists) {
			// Made by a handler that ended (crashed) before any offer was
			// stored or sent (claimRun let us take its claim over): nobody
			// has seen its public key, so replace it.
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
	err = w.createRun(ctx, rec)
	// The entry stays with a stored run, ours or (ErrKeyExists) another's.
	stored = err == nil || errors.Is(err, jetstream.ErrKeyExists)
	if err != nil {
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
	next.State = api.StateMaterialSent
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
		return checkRunMsg(m, env.Digest, rec.MaterialMsgID, rec.MaterialDigest,
			refuse(reasonStateMismatch, "material for replication %s in state %s", rec.ID, rec.State))
	}
	if !bytes.Equal(m.Material.OfferDigest, rec.OfferDigest) {
		return refuse(reasonStateMismatch, "material answers another offer")
	}
	if p := m.Material.Properties; p.KeySpec != rec.KeySpec || p.KeyUsage != rec.KeyUsage {
		return refuse(reasonBadProperties, "material with key_spec %q, key_usage %q; the init said %q, %q", p.KeySpec, p.KeyUsage, rec.KeySpec, rec.KeyUsage)
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
		// Another key under this ref: the key confirmation below tells
		// the source it is not the right key.
	case errors.Is(err, hsmsvc.ErrNotFound):
		// RAKB gone: consumed by an unwrap whose state write was lost (K
		// is here, and the key confirmation below proves it), or expired,
		// destroyed or lost (no K): the source starts a fresh run.
		if has, herr := w.cfg.HSM.HasKey(ctx, ref); herr != nil {
			return herr
		} else if !has {
			w.log.Warn("agreement key lost", "replication_id", rec.ID, "err", err)
			status = messages.StatusAgreementKeyLost
		}
	case errors.Is(err, hsmsvc.ErrUnwrapFailed), errors.Is(err, hsmsvc.ErrInvalidPeerKey):
		w.log.Warn("unwrap failed", "replication_id", rec.ID, "err", err)
		status = messages.StatusUnwrapFailed
	default:
		// The HSM failed on its own account (a token or disk error, a
		// crash): the RAKB is still there, or K is, so the redelivered
		// material is unwrapped again or answered from K.
		return fmt.Errorf("unwrap: %w", err)
	}
	next := *rec
	next.MaterialDigest, next.MaterialMsgID = env.Digest, m.MsgID
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
		created, err := w.storeReplica(ctx, rec, m.Material.Properties)
		if err != nil {
			return err
		}
		next.NewReplica = created
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

// storeReplica records the replica's metadata once a version's material is
// in the HSM. The run that creates the replica makes its version the
// current one (the primary sends the current version first); a version
// that arrives later is only added: the primary's key.sync says when it
// becomes current. It reports whether the run created the replica.
func (w *Worker) storeReplica(ctx context.Context, rec *replication, props messages.Properties) (bool, error) {
	now := w.cfg.Now()
	fresh := func(old *keyRecord) *keyRecord {
		k := &keyRecord{Key: api.Key{
			KeyID: rec.KeyID, Partition: w.bundle().Partition(), Region: w.cfg.Region,
			Role: api.RoleReplica, PrimaryRegion: rec.PrimaryRegion, KeySpec: props.KeySpec,
			KeyUsage: props.KeyUsage, Description: props.Description, Enabled: true,
			Versions: []uint32{rec.Version}, CurrentVersion: rec.Version,
			CreatedAt: now, UpdatedAt: now, ReplicatedFrom: rec.ID, UsableAt: &now,
			// The run brings the state of epoch 1 (the init carries no
			// epoch); if the key changed before this replica existed, the
			// primary syncs it at once (recordReceipt, needsSync).
			KeyState: api.KeyStateEnabled, Epoch: 1,
		}, Policy: rec.Policy}
		noteReceived(k, rec.Version, true, now)
		if old != nil {
			// Re-created after a deletion: keep numbering status reports
			// where the deleted replica stopped.
			k.StatusSeq, k.StatusAcked = old.StatusSeq, old.StatusAcked
		}
		return k
	}
	created := false
	_, err := createJSON(ctx, w.res.Keys, rec.KeyID, fresh(nil))
	if err == nil {
		created = true
	} else if errors.Is(err, jetstream.ErrKeyExists) {
		_, err = updateJSON(ctx, w.res.Keys, rec.KeyID, func(k *keyRecord) error {
			if k.Deleted {
				*k = *fresh(k)
				created = true
				return nil
			}
			created = false
			if slices.Contains(k.Versions, rec.Version) {
				return errNoChange
			}
			k.Versions = addVersion(k.Versions, rec.Version)
			noteReceived(k, rec.Version, false, now)
			k.UpdatedAt = now
			return nil
		})
	}
	if err != nil {
		return false, fmt.Errorf("store replica metadata: %w", err)
	}
	return created, nil
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
		next.State, next.Reason = api.StateFailed, reasonAgreementKeyLost
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
	if late && next.State == api.StateCompleted {
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
func retryable(run *replication) bool {
	return run.State == api.StateFailed && (run.TimedOut || run.Reason == reasonAgreementKeyLost)
}

// followUp repeats, idempotently, what ends a source run after its
// receipt: record it in the key, then afterReceipt. The sweeper calls it
// for ended runs still in the pending index, and a redelivered receipt
// calls it too.
func (w *Worker) followUp(ctx context.Context, run *replication) error {
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
func (w *Worker) recordReceipt(ctx context.Context, run *replication) (*keyRecord, uint32, error) {
	now := w.cfg.Now()
	var activated uint32
	key, err := w.updateKey(ctx, run.KeyID, func(k *keyRecord) error {
		activated = 0
		r, ok := findReplica(&k.Key, run.Peer)
		if !ok {
			return errNoChange // the replica was deleted meanwhile
		}
		if run.State == api.StateCompleted {
			if holds(&k.Key, run.Peer, run.Version) {
				// Recorded already (by this run, redelivered, or a later
				// one), with the replica's state and any activation in
				// the same write: nothing to write again.
				return errNoChange
			}
			first := !holdsAny(&k.Key, run.Peer)
			markHeld(&k.Key, run.Peer, run.Version)
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
			r.State = replicaState(&k.Key, run.Peer, r.State)
			r.Reason = ""
			activated = tryActivate(&k.Key, now)
		} else {
			if r.ReplicationID != run.ID || holds(&k.Key, run.Peer, run.Version) {
				return errNoChange
			}
			r.State, r.Reason = api.ReplicaFailed, run.Reason
		}
		r.ReplicationID = run.ID
		r.UpdatedAt = now
		setReplica(&k.Key, r)
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
func (w *Worker) afterReceipt(ctx context.Context, key *keyRecord, run *replication, activated uint32) error {
	if key == nil {
		return nil
	}
	sync := activated != 0 || slices.ContainsFunc(key.Replicas, func(r api.Replica) bool { return needsSync(&key.Key, r) })
	next := run.State == api.StateCompleted && len(missingVersions(&key.Key, run.Peer)) > 0
	if sync || next {
		if err := w.markKeyPending(ctx, key.KeyID); err != nil {
			return err
		}
	}
	if activated != 0 {
		w.event(ctx, api.Event{Type: api.EventVersionActivated, KeyID: key.KeyID, Version: activated, Regions: allRegions(&key.Key)})
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

// runFor loads the run a message belongs to (from the run cache when this
// worker wrote it last, see runCache) and checks role and peer.
func (w *Worker) runFor(ctx context.Context, m *messages.Message, role string) (*replication, uint64, error) {
	if ctx.Value(noCacheKey{}) == nil {
		if rec, rev, ok := w.runs.get(m.ReplicationID, w.cfg.Now()); ok {
			if u, _ := ctx.Value(cacheUseKey{}).(*cacheUse); u != nil {
				u.hit = true
			}
			w.met.runCache.WithLabelValues("hit").Inc()
			return w.checkRun(rec, rev, m, role)
		}
	}
	w.met.runCache.WithLabelValues("miss").Inc()
	rec, rev, err := getJSON[replication](ctx, w.res.Repl, m.ReplicationID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, refuse(reasonUnknownRun, "no replication %s in %s", m.ReplicationID, w.cfg.Region)
	}
	if err != nil {
		return nil, 0, err
	}
	return w.checkRun(rec, rev, m, role)
}

// checkRun checks that m comes from the run's peer and fits our role in it.
func (w *Worker) checkRun(rec *replication, rev uint64, m *messages.Message, role string) (*replication, uint64, error) {
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
	next, err := w.res.Repl.Update(ctx, rec.ID, b, rev)
	if err != nil {
		if w.runs.drop(rec.ID) && errors.Is(err, jetstream.ErrKeyExists) {
			w.met.runCache.WithLabelValues("stale").Inc()
		}
		return err
	}
	w.runs.put(rec, b, next, w.runDeadline(rec))
	return nil
}

// runDeadline is when the sweeper may end rec: a source run after
// RunTimeout, a destination run when it expires.
func (w *Worker) runDeadline(rec *replication) time.Time {
	if rec.Role == roleSource {
		return rec.CreatedAt.Add(w.cfg.RunTimeout)
	}
	return rec.ExpiresAt
}

// createRun stores a new run; jetstream.ErrKeyExists if its id is taken.
func (w *Worker) createRun(ctx context.Context, rec *replication) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	rev, err := w.res.Repl.Create(ctx, rec.ID, b)
	if err != nil {
		return err
	}
	w.runs.put(rec, b, rev, w.runDeadline(rec))
	return nil
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
	// A source run's entry is cleared after its follow-up (onReceipt,
	// sweepRun); a timed-out run's by the sweeper after retryOrGiveUp.
	if rec.Role == roleDestination && !rec.TimedOut {
		if err := w.clearPending(ctx, rec.ID); err != nil {
			w.log.Warn("pending index not cleared; the sweeper will", "replication_id", rec.ID, "err", err)
		}
	}
	elapsed := w.cfg.Now().Sub(rec.CreatedAt).Seconds()
	// The event's time is when the run changed state (for a destination:
	// when the key became usable), not when the event was published.
	ev := api.Event{KeyID: rec.KeyID, ReplicationID: rec.ID, Peer: rec.Peer, Version: rec.Version, Reason: rec.Reason, Time: rec.UpdatedAt}
	if rec.State == api.StateCompleted {
		w.met.replications.WithLabelValues(rec.Role, "completed").Inc()
		w.met.lastCompleted.SetToCurrentTime()
		if rec.Role == roleDestination {
			w.met.duration.WithLabelValues(rec.Role, "usable").Observe(elapsed)
			ev.Type = api.EventReplicaCreated
			if !rec.NewReplica {
				ev.Type = api.EventVersionReplicated // one more version of a replica here
			}
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
