package workers

import (
	"context"
	"errors"
	"fmt"

	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/repl"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/nats-io/nats.go/jetstream"
)

// This file is the shell of the destination role of a run: the decisions
// are the core's (internal/repl/destination.go: OnInit, AfterRAKB,
// OnMaterial, AfterUnwrap, StoreReplica); this file reads the records,
// claims the init, asks the HSM, and writes and sends in the order
// exec.go sets out.

// onInit (destination): make RAKB and answer with an offer.
func (w *Worker) onInit(ctx context.Context, env *messages.Envelope) (outcome, error) {
	m := &env.Message
	in := m.Init
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
	run, _, err := getJSON[repl.Run](ctx, w.res.Repl, m.ReplicationID)
	<-read
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		run, err = nil, nil
	}
	if errors.Is(keyErr, jetstream.ErrKeyNotFound) {
		key, keyErr = nil, nil
	}
	if err != nil {
		return accepted, err
	}
	cfg := w.core()
	v, rec, op := repl.OnInit(run, key, env, w.initPolicy(in), cfg, w.cfg.Now())
	if v.Kind != repl.Fresh {
		return w.answerRun(ctx, run, v, nil)
	}
	if keyErr != nil {
		return accepted, keyErr
	}
	// The pending entry is also this handler's claim on the init: a second
	// handler of the same init (a copy delivered at the same time, or a
	// redelivery while this one still runs) must not touch our RAKB.
	release, err := w.claimRun(ctx, rec.ID)
	if err != nil {
		return accepted, err
	}
	stored := false
	defer func() {
		if !stored {
			release()
		}
	}()
	var rakb []byte
	err = w.hsmOp("create_agreement_key", func() (err error) {
		rakb, err = w.cfg.HSM.CreateAgreementKey(ctx, op.RunID, op.ExpiresAt)
		if errors.Is(err, hsmsvc.ErrExists) {
			// Made by a handler that ended (crashed) before any offer was
			// stored or sent (claimRun let us take its claim over): nobody
			// has seen its public key, so replace it.
			if err = w.cfg.HSM.DestroyAgreementKey(ctx, op.RunID); err == nil || errors.Is(err, hsmsvc.ErrNotFound) {
				rakb, err = w.cfg.HSM.CreateAgreementKey(ctx, op.RunID, op.ExpiresAt)
			}
		}
		return err
	})
	if err != nil {
		return accepted, fmt.Errorf("create rakb: %w", err)
	}
	reply := repl.AfterRAKB(rec, rakb, cfg, w.cfg.Now())
	if err := w.sealRun(rec, reply); err != nil {
		return accepted, err
	}
	err = w.createRun(ctx, rec)
	// The entry stays with a stored run, ours or (ErrKeyExists) another's.
	stored = err == nil || errors.Is(err, jetstream.ErrKeyExists)
	if err != nil {
		// Another worker took this init first: keep its RAKB, drop ours,
		// and decide again on its run.
		_ = w.cfg.HSM.DestroyAgreementKey(ctx, rec.ID)
		if errors.Is(err, jetstream.ErrKeyExists) {
			if other, _, gerr := getJSON[repl.Run](ctx, w.res.Repl, rec.ID); gerr == nil && repl.Match(other, env).Kind == repl.Redelivery {
				return w.answerRun(ctx, other, repl.Verdict{Kind: repl.Redelivery}, nil)
			}
		}
		return accepted, fmt.Errorf("store replication: %w", err)
	}
	return accepted, w.publish(ctx, rec)
}

// onMaterial (destination): unwrap K into the HSM and send the receipt.
func (w *Worker) onMaterial(ctx context.Context, env *messages.Envelope) (outcome, error) {
	rec, rev, v, err := w.runFor(ctx, env)
	if err != nil || v.Kind != repl.Fresh {
		return w.answerRun(ctx, rec, v, err)
	}
	cfg := w.core()
	op, ref := repl.OnMaterial(rec, env, cfg)
	if ref != nil {
		return accepted, ref
	}
	href := hsmsvc.KeyRef(op.Ref)
	err = w.hsmOp("unwrap_from_peer", func() error {
		return w.cfg.HSM.UnwrapFromPeer(ctx, hsmsvc.UnwrapRequest{PeerPublicKey: op.PeerKey, Wrapped: op.Wrapped, Context: hsmsvc.KDFContext(op.KDF)})
	})
	res := repl.Unwrapped
	switch {
	case err == nil:
	case errors.Is(err, hsmsvc.ErrExists):
		res = repl.UnwrapKeyExists
	case errors.Is(err, hsmsvc.ErrNotFound):
		// RAKB gone: consumed by an unwrap whose state write was lost (K
		// is here), or expired, destroyed or lost (no K).
		has, herr := w.cfg.HSM.HasKey(ctx, href)
		if herr != nil {
			return accepted, herr
		}
		res = repl.UnwrapRAKBGoneKeyHeld
		if !has {
			w.log.Warn("agreement key lost", "replication_id", rec.ID, "err", err)
			res = repl.UnwrapRAKBGone
		}
	case errors.Is(err, hsmsvc.ErrUnwrapFailed), errors.Is(err, hsmsvc.ErrInvalidPeerKey):
		w.log.Warn("unwrap failed", "replication_id", rec.ID, "err", err)
		res = repl.UnwrapFailed
	default:
		// The HSM failed on its own account (a token or disk error, a
		// crash): the RAKB is still there, or K is, so the redelivered
		// material is unwrapped again or answered from K.
		return accepted, fmt.Errorf("unwrap: %w", err)
	}
	next, reply, held := repl.AfterUnwrap(rec, env, res, cfg, w.cfg.Now())
	if held {
		// Ordering (exec.go): K is in the HSM and the replica's record is
		// written before the run says COMPLETED and the receipt leaves.
		err = w.hsmOp("key_confirmation", func() (err error) {
			reply.Receipt.KeyConfirmation, err = w.cfg.HSM.KeyConfirmation(ctx, href, next.Transcript())
			return err
		})
		if err != nil {
			return accepted, fmt.Errorf("key confirmation: %w", err)
		}
		created, err := w.storeReplica(ctx, rec, env.Message.Material.Properties)
		if err != nil {
			return accepted, err
		}
		next.NewReplica = created
	}
	if err := w.sealRun(next, reply); err != nil {
		return accepted, err
	}
	o, err := w.writeAndSend(ctx, env, next, rev)
	if err != nil || o == duplicate {
		return o, err
	}
	w.finish(ctx, next)
	return accepted, nil
}

// storeReplica records the replica's metadata once a version's material is
// in the HSM (repl.NewReplicaKey, repl.StoreReplica). It reports whether
// the run created the replica.
func (w *Worker) storeReplica(ctx context.Context, rec *repl.Run, props messages.Properties) (bool, error) {
	now := w.cfg.Now()
	cfg := w.core()
	created := false
	_, err := createJSON(ctx, w.res.Keys, rec.KeyID, repl.NewReplicaKey(rec, props, nil, cfg, now))
	if err == nil {
		created = true
	} else if errors.Is(err, jetstream.ErrKeyExists) {
		_, err = updateJSON(ctx, w.res.Keys, rec.KeyID, func(k *repl.Key) (bool, error) {
			var changed bool
			created, changed = repl.StoreReplica(k, rec, props, cfg, now)
			return changed, nil
		})
	}
	if err != nil {
		return false, fmt.Errorf("store replica metadata: %w", err)
	}
	return created, nil
}
