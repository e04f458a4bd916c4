package workers

import (
	"context"
	"errors"
	"fmt"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/repl"
)

// This file is the shell of the rotation of a primary key
// (docs/LIFECYCLE.md; the decisions are in internal/repl/rotate.go).

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
	// old enough to be a crash's leftover (repl.ReservationTimeout).
	now := w.cfg.Now().UTC()
	var next uint32
	k, err := w.updateLiveKey(ctx, req.KeyID, func(k *repl.Key) (bool, error) {
		var e *repl.RequestError
		if next, e = repl.Reserve(k, w.core(), now); e != nil {
			return false, e
		}
		return true, nil
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
	key, err := w.updateKey(ctx, k.KeyID, func(k *repl.Key) (bool, error) {
		var e *repl.RequestError
		if activated, e = repl.RecordVersion(k, next, w.core(), now); e != nil {
			return false, e
		}
		return true, nil
	})
	if err != nil {
		// Not recorded (the key changed state meanwhile, say a hand-over
		// began): the material must not outlive the reservation, or a
		// later version of the same number would meet it in this HSM.
		if derr := w.cfg.HSM.DestroyKey(ctx, ref); derr != nil && !errors.Is(derr, hsmsvc.ErrNotFound) {
			w.log.Warn("unrecorded version not destroyed; the next rotation replaces it", "key_id", req.KeyID, "version", next, "err", derr)
		}
		_, _ = w.updateKey(ctx, req.KeyID, func(k *repl.Key) (bool, error) {
			return repl.Unreserve(k, next), nil
		})
		return nil, err
	}
	w.event(ctx, api.Event{Type: api.EventVersionStaged, KeyID: k.KeyID, Version: next, Regions: key.Holders()})
	w.log.Info("version staged", "key_id", k.KeyID, "version", next)
	if activated != 0 {
		w.event(ctx, api.Event{Type: api.EventVersionActivated, KeyID: k.KeyID, Version: next, Regions: key.AllRegions()})
	}
	for _, dst := range repl.RotationTargets(key) {
		if _, err := w.startRun(ctx, key.KeyID, dst, 0, 1); err != nil {
			w.log.Warn("staged version not sent; the sweeper will", "key_id", key.KeyID, "dst", dst, "err", err)
		}
	}
	if activated != 0 {
		w.syncReplicas(ctx, key.KeyID)
	}
	return w.describe(ctx, key.KeyID)
}

func (w *Worker) describe(ctx context.Context, keyID string) (*api.Key, error) {
	k, err := w.loadKey(ctx, keyID)
	if err != nil {
		return nil, err
	}
	return k.Public(), nil
}
