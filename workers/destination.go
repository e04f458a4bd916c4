package workers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/repl"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/nats-io/nats.go/jetstream"
)

// This file is the destination role of the replication state machine
// (docs/PROTOCOL.md; the diagram is in source.go).

// onInit (destination): make RAKB and answer with an offer.
func (w *Worker) onInit(ctx context.Context, env *messages.Envelope) error {
	m := &env.Message
	in := m.Init
	if in.PrimaryRegion != m.Src {
		return refuse(reasonNotPrimary, "init from %s names primary %s", m.Src, in.PrimaryRegion)
	}
	// The run (a redelivery finds it) and the key (held here already?),
	// read at once: one round trip instead of two.
	var (
		key    *repl.Key
		keyErr error
		read   = make(chan struct{})
	)
	go func() {
		defer close(read)
		key, _, keyErr = getJSON[repl.Key](ctx, w.res.Keys, in.KeyID)
	}()
	rec, _, err := getJSON[repl.Run](ctx, w.res.Repl, m.ReplicationID)
	<-read
	if err == nil {
		if rec.Role == repl.Destination && bytes.Equal(rec.InitDigest, env.Digest) {
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
		if key.Role == repl.Primary || key.PrimaryRegion != m.Src {
			return refuse(reasonKeyExists, "key %s exists in %s with primary %s", in.KeyID, w.cfg.Region, key.PrimaryRegion)
		}
	} else if keyErr != nil && !errors.Is(keyErr, jetstream.ErrKeyNotFound) {
		return keyErr
	}

	now := w.cfg.Now()
	rec = &repl.Run{
		ID: m.ReplicationID, Role: repl.Destination, KeyID: in.KeyID, Version: in.Version,
		Peer: m.Src, State: repl.OfferSent, KeySpec: in.KeySpec, KeyUsage: in.KeyUsage,
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
			if other, _, gerr := getJSON[repl.Run](ctx, w.res.Repl, rec.ID); gerr == nil && bytes.Equal(other.InitDigest, env.Digest) {
				return w.republish(ctx, other)
			}
		}
		return fmt.Errorf("store replication: %w", err)
	}
	return w.publish(ctx, rec)
}

// onMaterial (destination): unwrap K into the HSM and send the receipt.
func (w *Worker) onMaterial(ctx context.Context, env *messages.Envelope) error {
	m := &env.Message
	rec, rev, err := w.runFor(ctx, m, repl.Destination)
	if err != nil {
		return err
	}
	if rec.State != repl.OfferSent {
		if bytes.Equal(rec.MaterialDigest, env.Digest) {
			return w.republish(ctx, rec)
		}
		return checkRunMsg(m, env.Digest, rec.MaterialMsgID, rec.MaterialDigest,
			refuse(reasonStateMismatch, "material for replication %s in state %s", rec.ID, rec.State))
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
		next.State = repl.Completed
		next.UsableAt = &next.UpdatedAt
		next.CompletedAt = &next.UpdatedAt
	} else {
		next.State = repl.Failed
		next.Reason = status
	}
	if _, _, err := w.seal(&next, reply); err != nil {
		return err
	}
	if err := w.casRun(ctx, &next, rev); err != nil {
		return w.lostRace(ctx, m, env.Digest, err, func(o *repl.Run) []byte { return o.MaterialDigest })
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
func (w *Worker) storeReplica(ctx context.Context, rec *repl.Run, props messages.Properties) (bool, error) {
	now := w.cfg.Now()
	fresh := func(old *repl.Key) *repl.Key {
		k := &keyRecord{
			KeyID: rec.KeyID, Partition: w.bundle().Partition(), Region: w.cfg.Region,
			Role: repl.ReplicaRole, PrimaryRegion: rec.PrimaryRegion, KeySpec: props.KeySpec,
			KeyUsage: props.KeyUsage, Description: props.Description, Enabled: true,
			Versions: []uint32{rec.Version}, CurrentVersion: rec.Version,
			CreatedAt: now, UpdatedAt: now, ReplicatedFrom: rec.ID, UsableAt: &now,
			// The run brings the state of epoch 1 (the init carries no
			// epoch); if the key changed before this replica existed, the
			// primary syncs it at once (recordReceipt, needsSync).
			KeyState: repl.KeyEnabled, Epoch: 1, Policy: rec.Policy,
		}
		k.NoteReceived(rec.Version, true, now)
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
		_, err = updateJSON(ctx, w.res.Keys, rec.KeyID, func(k *repl.Key) error {
			if k.Deleted {
				*k = *fresh(k)
				created = true
				return nil
			}
			created = false
			if slices.Contains(k.Versions, rec.Version) {
				return errNoChange
			}
			k.Versions = repl.AddVersion(k.Versions, rec.Version)
			k.NoteReceived(rec.Version, false, now)
			k.UpdatedAt = now
			return nil
		})
	}
	if err != nil {
		return false, fmt.Errorf("store replica metadata: %w", err)
	}
	return created, nil
}
