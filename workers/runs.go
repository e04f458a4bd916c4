package workers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/internal/repl"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/nats-io/nats.go/jetstream"
)

// This file reads and writes run records (the REPL bucket), through the run
// cache (runcache.go).

// activeRun returns the replica's run in flight, if any.
func (w *Worker) activeRun(ctx context.Context, r repl.Replica) *repl.Run {
	if r.ReplicationID == "" {
		return nil
	}
	run, _, err := getJSON[repl.Run](ctx, w.res.Repl, r.ReplicationID)
	if err != nil || run.Ended() || w.expired(run) {
		return nil
	}
	return run
}

func (w *Worker) expired(r *repl.Run) bool { return w.cfg.Now().After(r.ExpiresAt) }

// runFor loads the run a message belongs to (from the run cache when this
// worker wrote it last, see runCache) and checks role and peer.
func (w *Worker) runFor(ctx context.Context, m *messages.Message, role repl.Role) (*repl.Run, uint64, error) {
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
	rec, rev, err := getJSON[repl.Run](ctx, w.res.Repl, m.ReplicationID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, refuse(reasonUnknownRun, "no replication %s in %s", m.ReplicationID, w.cfg.Region)
	}
	if err != nil {
		return nil, 0, err
	}
	return w.checkRun(rec, rev, m, role)
}

// checkRun checks that m comes from the run's peer and fits our role in it.
func (w *Worker) checkRun(rec *repl.Run, rev uint64, m *messages.Message, role repl.Role) (*repl.Run, uint64, error) {
	if rec.Role != role {
		return nil, 0, refuse(reasonStateMismatch, "%s for a run where %s is %s", m.Type, w.cfg.Region, rec.Role)
	}
	if rec.Peer != m.Src {
		return nil, 0, refuse(reasonWrongPeer, "%s from %s for a run with %s", m.Type, m.Src, rec.Peer)
	}
	return rec, rev, nil
}

// casRun writes rec if the stored revision is still rev.
func (w *Worker) casRun(ctx context.Context, rec *repl.Run, rev uint64) error {
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
func (w *Worker) runDeadline(rec *repl.Run) time.Time {
	if rec.Role == repl.Source {
		return rec.CreatedAt.Add(w.cfg.RunTimeout)
	}
	return rec.ExpiresAt
}

// createRun stores a new run; jetstream.ErrKeyExists if its id is taken.
func (w *Worker) createRun(ctx context.Context, rec *repl.Run) error {
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
func (w *Worker) lostRace(ctx context.Context, m *messages.Message, digest []byte, err error, consumed func(*repl.Run) []byte) error {
	if errors.Is(err, jetstream.ErrKeyExists) {
		if other, _, gerr := getJSON[repl.Run](ctx, w.res.Repl, m.ReplicationID); gerr == nil && bytes.Equal(consumed(other), digest) {
			return w.republish(ctx, other)
		}
	}
	return fmt.Errorf("store replication %s: %w", m.ReplicationID, err)
}

// finish counts, times and announces a run's end in this region.
func (w *Worker) finish(ctx context.Context, rec *repl.Run) {
	// A source run's entry is cleared after its follow-up (onReceipt,
	// sweepRun); a timed-out run's by the sweeper after retryOrGiveUp.
	if rec.Role == repl.Destination && !rec.TimedOut {
		if err := w.clearPending(ctx, rec.ID); err != nil {
			w.log.Warn("pending index not cleared; the sweeper will", "replication_id", rec.ID, "err", err)
		}
	}
	elapsed := w.cfg.Now().Sub(rec.CreatedAt).Seconds()
	// The event's time is when the run changed state (for a destination:
	// when the key became usable), not when the event was published.
	ev := api.Event{KeyID: rec.KeyID, ReplicationID: rec.ID, Peer: rec.Peer, Version: rec.Version, Reason: rec.Reason, Time: rec.UpdatedAt}
	if rec.State == repl.Completed {
		w.met.replications.WithLabelValues(string(rec.Role), "completed").Inc()
		w.met.lastCompleted.SetToCurrentTime()
		if rec.Role == repl.Destination {
			w.met.duration.WithLabelValues(string(rec.Role), "usable").Observe(elapsed)
			ev.Type = api.EventReplicaCreated
			if !rec.NewReplica {
				ev.Type = api.EventVersionReplicated // one more version of a replica here
			}
		} else {
			w.met.duration.WithLabelValues(string(rec.Role), "confirmed").Observe(elapsed)
			ev.Type = api.EventReplicationCompleted
		}
		w.log.Info("replication completed", "replication_id", rec.ID, "key_id", rec.KeyID, "role", rec.Role, "peer", rec.Peer, "seconds", elapsed)
	} else {
		w.met.replications.WithLabelValues(string(rec.Role), "failed").Inc()
		ev.Type = api.EventReplicationFailed
		w.log.Warn("replication failed", "replication_id", rec.ID, "key_id", rec.KeyID, "role", rec.Role, "peer", rec.Peer, "reason", rec.Reason)
	}
	w.event(ctx, ev)
}
