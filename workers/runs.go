package workers

import (
	"context"
	"encoding/json"
	"errors"

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
	if err != nil || run.Ended() || run.Expired(w.cfg.Now()) {
		return nil
	}
	return run
}

// runFor loads the run a message of a run belongs to (from the run cache
// when this worker wrote it last, see runCache) and judges the message on
// it (repl.Match). A refusal judged on the cache is judged again on the
// KV's record: another worker of the region may have moved the run on. A
// run absent here is nil.
func (w *Worker) runFor(ctx context.Context, env *messages.Envelope) (*repl.Run, uint64, repl.Verdict, error) {
	id := env.Message.ReplicationID
	var cached repl.Verdict
	if rec, rev, ok := w.runs.get(id, w.cfg.Now()); ok {
		w.met.runCache.WithLabelValues("hit").Inc()
		if cached = repl.Match(rec, env); cached.Kind != repl.Refused {
			return rec, rev, cached, nil
		}
		w.runs.drop(id)
	} else {
		w.met.runCache.WithLabelValues("miss").Inc()
	}
	rec, rev, err := getJSON[repl.Run](ctx, w.res.Repl, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		rec, err = nil, nil
	}
	if err != nil {
		return nil, 0, repl.Verdict{}, err
	}
	v := repl.Match(rec, env)
	if cached.Kind == repl.Refused && (v.Kind != repl.Refused || v.Refusal.Reason != cached.Refusal.Reason) {
		w.met.runCache.WithLabelValues("stale").Inc()
	}
	return rec, rev, v, nil
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
	w.runs.put(rec, b, next, repl.Deadline(rec, w.core()))
	return nil
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
	w.runs.put(rec, b, rev, repl.Deadline(rec, w.core()))
	return nil
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
