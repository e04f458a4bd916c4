package workers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/repl"
)

// This file is the shell of the scheduled deletion of a key or a replica
// (docs/LIFECYCLE.md; the decisions are in internal/repl/deletion.go).

func (w *Worker) apiScheduleKeyDeletion(ctx context.Context, data []byte) (any, error) {
	var req api.ScheduleKeyDeletionRequest
	if err := decodeKeyRequest(data, &req, &req.KeyID); err != nil {
		return nil, err
	}
	wait := w.cfg.DeletionWaitingPeriod
	if req.PendingWindowDays != 0 {
		if req.PendingWindowDays < 1 || req.PendingWindowDays > 30 {
			return nil, badRequest("pending_window_days must be 1 to 30")
		}
		wait = time.Duration(req.PendingWindowDays) * 24 * time.Hour
	}
	if err := w.markKeyPending(ctx, req.KeyID); err != nil {
		return nil, err
	}
	now := w.cfg.Now().UTC()
	key, err := w.updateLiveKey(ctx, req.KeyID, func(k *repl.Key) (bool, error) {
		var inFlight []string
		if k.Role == repl.Primary {
			for _, r := range k.Replicas {
				if !k.HoldsAny(r.Region) && w.activeRun(ctx, r) != nil {
					inFlight = append(inFlight, r.Region)
				}
			}
		}
		if e := repl.ScheduleDeletion(k, wait, inFlight, now); e != nil {
			return false, e
		}
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	typ := api.EventKeyDeletionScheduled
	if key.Role == repl.ReplicaRole {
		typ = api.EventReplicaDeletionScheduled
		if err := w.sendStatus(ctx, key, key.PrimaryRegion, nil); err != nil {
			w.log.Warn("status not sent to the primary; the sweeper will", "key_id", key.KeyID, "err", err)
		}
	}
	w.event(ctx, api.Event{Type: typ, KeyID: key.KeyID, Reason: "deletion on " + key.DeletionDate.Format(time.RFC3339)})
	return key.Public(), nil
}

func (w *Worker) apiCancelKeyDeletion(ctx context.Context, data []byte) (any, error) {
	var req api.KeyRequest
	if err := decodeKeyRequest(data, &req, &req.KeyID); err != nil {
		return nil, err
	}
	if err := w.markKeyPending(ctx, req.KeyID); err != nil {
		return nil, err
	}
	now := w.cfg.Now().UTC()
	key, err := w.updateLiveKey(ctx, req.KeyID, func(k *repl.Key) (bool, error) {
		if e := repl.CancelDeletion(k, now); e != nil {
			return false, e
		}
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	typ := api.EventKeyDeletionCancelled
	if key.Role == repl.ReplicaRole {
		typ = api.EventReplicaDeletionCancelled
		if err := w.sendStatus(ctx, key, key.PrimaryRegion, nil); err != nil {
			w.log.Warn("status not sent to the primary; the sweeper will", "key_id", key.KeyID, "err", err)
		}
	}
	w.event(ctx, api.Event{Type: typ, KeyID: key.KeyID})
	return key.Public(), nil
}

// deleteNow destroys every version of k in the HSM and removes the key:
// a primary's record goes at once, a replica's stays as a tombstone until
// its primary acknowledges the deletion.
func (w *Worker) deleteNow(ctx context.Context, k *repl.Key) error {
	for _, v := range k.Versions {
		ref := hsmsvc.KeyRef{KeyID: k.KeyID, Version: v}
		err := w.hsmOp("destroy_key", func() error { return w.cfg.HSM.DestroyKey(ctx, ref) })
		if err != nil && !errors.Is(err, hsmsvc.ErrNotFound) {
			return fmt.Errorf("destroy version %d: %w", v, err)
		}
	}
	if k.Role == repl.Primary {
		if err := w.res.Keys.Delete(ctx, k.KeyID); err != nil {
			return err
		}
		w.event(ctx, api.Event{Type: api.EventKeyDeleted, KeyID: k.KeyID})
		w.log.Info("key deleted", "key_id", k.KeyID)
		return nil
	}
	now := w.cfg.Now().UTC()
	key, err := w.updateKey(ctx, k.KeyID, func(k *repl.Key) (bool, error) {
		return repl.Tombstone(k, now), nil
	})
	if err != nil {
		return err
	}
	if !key.Deleted {
		return nil
	}
	w.event(ctx, api.Event{Type: api.EventReplicaDeleted, KeyID: k.KeyID, Peer: key.PrimaryRegion})
	w.log.Info("replica deleted", "key_id", k.KeyID)
	return w.sendStatus(ctx, key, key.PrimaryRegion, nil)
}
