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

// This file is the scheduled deletion of a key or a replica (docs/LIFECYCLE.md).

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
	key, err := w.updateLiveKey(ctx, req.KeyID, func(k *repl.Key) error {
		switch k.KeyState {
		case repl.KeyPendingDeletion:
			return conflict("key %s is already pending deletion (on %s)", k.KeyID, k.DeletionDate.Format(time.RFC3339))
		case repl.KeyUpdating:
			return conflict("key %s is changing its primary region; wait until it is done", k.KeyID)
		}
		if k.Role == repl.Primary {
			var live []string
			for _, r := range k.Replicas {
				if k.HoldsAny(r.Region) || w.activeRun(ctx, r) != nil {
					live = append(live, r.Region)
				}
			}
			slices.Sort(live)
			if len(live) > 0 {
				return conflict("key %s is a primary with replicas in %s; delete them first", k.KeyID, strings.Join(live, ", "))
			}
		} else {
			k.StatusSeq++
			k.StatusSentAt = now
		}
		d := now.Add(wait)
		k.KeyState, k.DeletionDate, k.UpdatedAt = repl.KeyPendingDeletion, &d, now
		return nil
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
	key, err := w.updateLiveKey(ctx, req.KeyID, func(k *repl.Key) error {
		if k.KeyState != repl.KeyPendingDeletion {
			return conflict("key %s is not pending deletion", k.KeyID)
		}
		if k.Role == repl.ReplicaRole {
			k.StatusSeq++
			k.StatusSentAt = now
		}
		k.KeyState, k.DeletionDate, k.UpdatedAt = repl.KeyEnabled, nil, now
		return nil
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
	key, err := w.updateKey(ctx, k.KeyID, func(k *repl.Key) error {
		if k.Deleted || k.KeyState != repl.KeyPendingDeletion {
			return errNoChange
		}
		k.Deleted = true
		k.Versions, k.CurrentVersion, k.DeletionDate, k.Enabled = nil, 0, nil, false
		k.StatusSeq++
		k.StatusSentAt = now
		k.UpdatedAt = now
		return nil
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
