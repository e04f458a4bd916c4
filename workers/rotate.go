package workers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/repl"
)

// This file is the rotation of a primary key (docs/LIFECYCLE.md).

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
	k, err := w.updateLiveKey(ctx, req.KeyID, func(k *repl.Key) error {
		if err := w.canChangeShared(k); err != nil {
			return err
		}
		if s := k.Staged(); s != 0 {
			return conflict("key %s: version %d is still staged, waiting for %s", k.KeyID, s, strings.Join(k.WaitingFor(s), ", "))
		}
		if k.Reserved != 0 && now.Sub(k.ReservedAt) < reservationTimeout {
			return conflict("key %s is being rotated by another request", k.KeyID)
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
	key, err := w.updateKey(ctx, k.KeyID, func(k *repl.Key) error {
		if k.Reserved != next || slices.Contains(k.Versions, next) {
			return conflict("key %s: the rotation to version %d was taken over meanwhile", k.KeyID, next)
		}
		if err := w.canChangeShared(k); err != nil {
			return err
		}
		k.Reserved, k.ReservedAt = 0, time.Time{}
		k.Versions = repl.AddVersion(k.Versions, next)
		k.VersionDetails = append(k.VersionDetails, repl.KeyVersion{
			Version: next, State: repl.VersionStaged, ReplicatedTo: []string{w.cfg.Region}, CreatedAt: now,
		})
		k.UpdatedAt = now
		activated = k.TryActivate(now) // at once if no replica holds the key
		return nil
	})
	if err != nil {
		// Not recorded (the key changed state meanwhile, say a hand-over
		// began): the material must not outlive the reservation, or a
		// later version of the same number would meet it in this HSM.
		if derr := w.cfg.HSM.DestroyKey(ctx, ref); derr != nil && !errors.Is(derr, hsmsvc.ErrNotFound) {
			w.log.Warn("unrecorded version not destroyed; the next rotation replaces it", "key_id", req.KeyID, "version", next, "err", derr)
		}
		_, _ = w.updateKey(ctx, req.KeyID, func(k *repl.Key) error {
			if k.Reserved != next {
				return errNoChange
			}
			k.Reserved, k.ReservedAt = 0, time.Time{}
			return nil
		})
		return nil, err
	}
	w.event(ctx, api.Event{Type: api.EventVersionStaged, KeyID: k.KeyID, Version: next, Regions: key.Holders()})
	w.log.Info("version staged", "key_id", k.KeyID, "version", next)
	if activated != 0 {
		w.event(ctx, api.Event{Type: api.EventVersionActivated, KeyID: k.KeyID, Version: next, Regions: key.AllRegions()})
	}
	for _, r := range key.Replicas {
		if r.State == repl.ReplicaFailed && !key.HoldsAny(r.Region) || r.State == repl.ReplicaPendingDeletion {
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
func (w *Worker) canChangeShared(k *repl.Key) error {
	if k.Role != repl.Primary {
		return badRequest("key %s is a replica in %s; its primary region is %s", k.KeyID, w.cfg.Region, k.PrimaryRegion)
	}
	switch k.KeyState {
	case repl.KeyUpdating:
		return conflict("key %s is handing its primary role over to %s", k.KeyID, k.PendingPrimary)
	case repl.KeyPendingDeletion:
		return conflict("key %s is pending deletion", k.KeyID)
	}
	return nil
}

func (w *Worker) describe(ctx context.Context, keyID string) (*api.Key, error) {
	k, err := w.loadKey(ctx, keyID)
	if err != nil {
		return nil, err
	}
	return k.Public(), nil
}
