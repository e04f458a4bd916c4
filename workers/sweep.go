package workers

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/internal/repl"
	"github.com/nats-io/nats.go/jetstream"
)

// The sweeper ends runs that cannot finish. Every run in flight has an
// entry in the PENDING bucket (written before the run itself, deleted when
// it ends), so a sweep reads only runs in flight, never the whole history.
//
//   - A source run not COMPLETED within RunTimeout is marked FAILED
//     (timed out) and, while fewer than MaxAttempts runs were tried for the
//     replica, replaced by a fresh run; after the last attempt the replica is
//     marked FAILED with the reason. A run whose destination answered
//     agreement_key_lost is retried the same way (onReceipt, or the sweep
//     after a crash).
//   - A destination run still waiting for material when its RAKB expires is
//     marked FAILED and its RAKB destroyed.
//
// Every change is a compare-and-set on the run, so several workers may
// sweep at once: one wins, the others see the run ended.

// orphanAge is how old a pending entry without a run must be before it is
// removed (a run is stored right after its entry; a crash in between leaves
// the entry alone).
const orphanAge = time.Minute

// clearPending removes a run's entry from the pending index with a purge
// whose marker expires after layout.PendingMarkerTTL, so listing the index
// costs what is in flight, not history.
func (w *Worker) clearPending(ctx context.Context, id string) error {
	if err := w.res.Pending.Purge(ctx, id, jetstream.PurgeTTL(layout.PendingMarkerTTL)); err != nil {
		return fmt.Errorf("pending index: %w", err)
	}
	return nil
}

func (w *Worker) markPending(ctx context.Context, id string) error {
	if _, err := w.res.Pending.Put(ctx, id, []byte(strconv.FormatInt(w.cfg.Now().UnixMilli(), 10))); err != nil {
		return fmt.Errorf("pending index: %w", err)
	}
	return nil
}

// markPendingAsync starts markPending and returns where its result will
// be; the caller receives it (on every path) before the change the entry
// stands for, and may do other work meanwhile.
func (w *Worker) markPendingAsync(ctx context.Context, id string) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- w.markPending(ctx, id) }()
	return ch
}

// claimTimeout is how old a destination run's claim (its pending entry,
// claimRun) must be before another handler may take it over: longer than
// a message handler may run (dispatch's 25 s), so its owner has ended.
const claimTimeout = 30 * time.Second

// errClaimed: another handler is working on this init; the message is
// retried (and then answered from the run it stored).
var errClaimed = errors.New("another handler is working on this init")

// claimRun writes a destination run's pending entry with Create: the
// handler that writes it is the one that handles the init. A handler that
// finds an entry younger than claimTimeout retries later (errClaimed); an
// older one was left by a handler that crashed before storing the run,
// and is taken over (compare-and-set on its revision, so only one takes
// it).
//
// It returns release, which gives the claim up (the entry goes, if it is
// still ours) for a handler that fails before it stores the run, so that
// the retry need not wait for claimTimeout.
func (w *Worker) claimRun(ctx context.Context, id string) (release func(), err error) {
	now := w.cfg.Now()
	stamp := []byte(strconv.FormatInt(now.UnixMilli(), 10))
	rev, err := w.res.Pending.Create(ctx, id, stamp)
	if errors.Is(err, jetstream.ErrKeyExists) {
		e, gerr := w.res.Pending.Get(ctx, id)
		if gerr != nil {
			return nil, fmt.Errorf("pending index: %w", gerr) // gone meanwhile: retried
		}
		ms, _ := strconv.ParseInt(string(e.Value()), 10, 64)
		if now.Sub(time.UnixMilli(ms)) < claimTimeout {
			return nil, errClaimed
		}
		rev, err = w.res.Pending.Update(ctx, id, stamp, e.Revision())
		if errors.Is(err, jetstream.ErrKeyExists) {
			return nil, errClaimed
		}
	}
	if err != nil {
		return nil, fmt.Errorf("pending index: %w", err)
	}
	return func() {
		err := w.res.Pending.Purge(context.WithoutCancel(ctx), id, jetstream.LastRevision(rev), jetstream.PurgeTTL(layout.PendingMarkerTTL))
		if err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			w.log.Warn("claim not released; another handler takes it over later", "replication_id", id, "err", err)
		}
	}, nil
}

// rakbSweepEvery is how often (in sweeps) the HSM is asked to destroy
// expired RAKBs, where it keeps them (hsmsvc.AgreementKeySweeper).
const rakbSweepEvery = 12

func (w *Worker) sweepLoop(ctx context.Context) {
	// Entries are removed by purges whose markers expire by themselves;
	// delete markers left by older versions (plain deletes) go once here.
	if err := w.res.Pending.PurgeDeletes(ctx, jetstream.DeleteMarkersOlderThan(orphanAge)); err != nil && ctx.Err() == nil {
		w.log.Warn("pending index markers not purged", "err", err)
	}
	t := time.NewTicker(w.cfg.SweepInterval)
	defer t.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := w.sweep(ctx); err != nil && ctx.Err() == nil {
				w.log.Warn("sweep failed", "err", err)
			}
			if s, ok := w.cfg.HSM.(hsmsvc.AgreementKeySweeper); ok && n%rakbSweepEvery == 0 {
				if k, err := s.SweepExpired(ctx); err != nil && ctx.Err() == nil {
					w.log.Warn("expired agreement keys not swept", "err", err)
				} else if k > 0 {
					w.log.Info("expired agreement keys destroyed", "count", k)
				}
			}
		}
	}
}

// sweep examines every run in flight once.
func (w *Worker) sweep(ctx context.Context) error {
	lister, err := w.res.Pending.ListKeys(ctx)
	if err != nil {
		return err
	}
	var ids []string
	for id := range lister.Keys() {
		ids = append(ids, id)
	}
	var errs []error
	for _, id := range ids {
		if keyID, ok := strings.CutPrefix(id, lcPrefix); ok {
			if err := w.sweepKeyEntry(ctx, id, keyID); err != nil {
				errs = append(errs, fmt.Errorf("key %s: %w", keyID, err))
			}
			continue
		}
		if err := w.sweepRun(ctx, id); err != nil {
			errs = append(errs, fmt.Errorf("run %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// sweepKeyEntry runs sweepKey and removes the key's entry when no work
// remains, unless the entry was written again meanwhile (its revision
// changed): then the work it stands for is newer than what was checked.
func (w *Worker) sweepKeyEntry(ctx context.Context, id, keyID string) error {
	e, err := w.res.Pending.Get(ctx, id)
	if err != nil {
		return nil // gone meanwhile
	}
	pending, err := w.sweepKey(ctx, keyID)
	if err != nil || pending {
		return err
	}
	err = w.res.Pending.Purge(ctx, id, jetstream.LastRevision(e.Revision()), jetstream.PurgeTTL(layout.PendingMarkerTTL))
	if err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("pending index: %w", err)
	}
	return nil
}

func (w *Worker) sweepRun(ctx context.Context, id string) error {
	now := w.cfg.Now()
	rec, rev, err := getJSON[repl.Run](ctx, w.res.Repl, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		e, gerr := w.res.Pending.Get(ctx, id)
		if gerr != nil {
			return nil
		}
		ms, _ := strconv.ParseInt(string(e.Value()), 10, 64)
		if now.Sub(time.UnixMilli(ms)) > orphanAge {
			// Only the entry read: a run started again meanwhile (a
			// redelivered init) has written a new one, which stays.
			err := w.res.Pending.Purge(ctx, id, jetstream.LastRevision(e.Revision()), jetstream.PurgeTTL(layout.PendingMarkerTTL))
			if err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
				return fmt.Errorf("pending index: %w", err)
			}
		}
		return nil
	}
	if err != nil {
		return err
	}
	if rec.Ended() {
		// The follow-up of a source run (retry or give up after a
		// timeout; otherwise recording the receipt's outcome in the key
		// and what it leads to) is done before its entry goes: a crash in
		// between repeats it.
		switch {
		case rec.Role == repl.Source && repl.Retryable(rec):
			if err := w.retryOrGiveUp(ctx, rec); err != nil {
				return err
			}
		case rec.Role == repl.Source:
			if err := w.followUp(withActor(ctx, "worker"), rec); err != nil {
				return err
			}
		}
		return w.clearPending(ctx, id)
	}
	next := repl.TimeOut(rec, w.core(), now)
	if next == nil {
		return nil // in flight, before its deadline (repl.Deadline)
	}
	if err := w.casRun(ctx, next, rev); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return nil // the run moved on meanwhile
		}
		return err
	}
	if rec.Role == repl.Destination {
		if err := w.cfg.HSM.DestroyAgreementKey(ctx, rec.ID); err != nil && !errors.Is(err, hsmsvc.ErrNotFound) {
			w.log.Warn("rakb not destroyed; it expires by itself", "replication_id", rec.ID, "err", err)
		}
	}
	w.met.timedOut.WithLabelValues(string(rec.Role)).Inc()
	w.finish(ctx, next)
	if rec.Role == repl.Source {
		if err := w.retryOrGiveUp(ctx, next); err != nil {
			return err // the entry stays: the next sweep tries again
		}
	}
	return w.clearPending(ctx, id)
}

// retryOrGiveUp starts the next attempt for a replica whose run timed out
// or whose destination lost its agreement key (retryable), or marks the
// replica FAILED after the last one. It does nothing if the
// replica has moved on (a newer run, or a late receipt delivered the
// version), so it may be repeated.
func (w *Worker) retryOrGiveUp(ctx context.Context, failed *repl.Run) error {
	ctx = withActor(ctx, "worker")
	key, err := w.loadKey(ctx, failed.KeyID)
	if err != nil {
		key = nil // the key is gone: nothing to retry
	}
	d := repl.Retry(failed, key, w.core())
	switch d.Kind {
	case repl.RetryNothing:
		return nil
	case repl.RetryStart:
		next, err := w.startRun(ctx, failed.KeyID, failed.Peer, failed.Version, d.Attempt)
		if err != nil {
			var ae *apiError
			if errors.As(err, &ae) {
				// The key or replica changed so that no run can start
				// (being deleted, primary handed over): nothing to retry.
				w.log.Info("replication not retried", "key_id", failed.KeyID, "dst", failed.Peer, "reason", ae.Detail)
				return nil
			}
			return fmt.Errorf("retry replication of %s to %s: %w", failed.KeyID, failed.Peer, err)
		}
		w.met.retried.Inc()
		w.log.Info("replication retried with a fresh run", "key_id", failed.KeyID, "dst", failed.Peer,
			"failed_run", failed.ID, "new_run", next.ID, "attempt", next.Attempt)
		return nil
	}
	_, err = w.updateKey(ctx, failed.KeyID, func(k *repl.Key) (bool, error) {
		return repl.GiveUp(k, failed, d.Reason, w.cfg.Now()), nil
	})
	if err == nil {
		w.met.gaveUp.Inc()
		w.log.Warn("replica failed", "key_id", failed.KeyID, "dst", failed.Peer, "version", failed.Version, "reason", d.Reason)
	}
	return err
}

// lcPrefix marks a key's entry in the PENDING index.
const lcPrefix = "lc."

// markKeyPending records that keyID has lifecycle work the sweeper must
// check (resends, deletion date).
func (w *Worker) markKeyPending(ctx context.Context, keyID string) error {
	return w.markPending(ctx, lcPrefix+keyID)
}

// sweepKey does the lifecycle work due for one key (repl.Duties): resend
// what was not acknowledged within MessageTTL, delete when the date has
// come, restart the copy of versions a replica lacks. It reports whether
// work remains.
func (w *Worker) sweepKey(ctx context.Context, keyID string) (bool, error) {
	ctx = withActor(ctx, "worker")
	k, _, err := getJSON[repl.Key](ctx, w.res.Keys, keyID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return true, err
	}
	k.Normalize()
	now := w.cfg.Now()
	d := repl.Duties(k, w.core(), now)
	var errs []error
	switch {
	case d.Delete:
		if err := w.deleteNow(ctx, k); err != nil {
			return true, err
		}
		return w.sweepKey(ctx, keyID) // a tombstone still reports
	case d.DropTombstone:
		if err := w.res.Keys.Delete(ctx, keyID); err != nil {
			return true, err
		}
		if d.Abandoned {
			w.log.Warn("deleted replica's tombstone removed without the primary's acknowledgement", "key_id", keyID)
		}
		return false, nil
	}
	if d.ResendHandover {
		_, err := w.updateKey(ctx, keyID, func(k *repl.Key) (bool, error) {
			if k.PendingPrimary == "" {
				return false, nil
			}
			k.HandoverSentAt = now
			return true, nil
		})
		if err == nil {
			err = w.sendHandover(ctx, k)
		}
		errs = append(errs, err)
	}
	for _, dst := range d.Copy {
		if r, _ := k.Replica(dst); w.activeRun(ctx, r) == nil {
			if _, err := w.startRun(ctx, keyID, dst, 0, 1); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if d.Activate {
		var activated uint32
		key, err := w.updateKey(ctx, keyID, func(k *repl.Key) (bool, error) {
			activated = k.TryActivate(now)
			return activated != 0, nil
		})
		errs = append(errs, err)
		if err == nil && activated != 0 {
			w.event(ctx, api.Event{Type: api.EventVersionActivated, KeyID: keyID, Version: activated, Regions: key.AllRegions()})
		}
	}
	if d.Sync {
		w.syncReplicas(ctx, keyID)
	}
	if d.ResendStatus {
		_, err := w.updateKey(ctx, keyID, func(k *repl.Key) (bool, error) { k.StatusSentAt = now; return true, nil })
		if err == nil {
			err = w.sendStatus(ctx, k, k.PrimaryRegion, nil)
		}
		errs = append(errs, err)
	}
	if d.ResendAnnounce {
		_, err := w.updateKey(ctx, keyID, func(k *repl.Key) (bool, error) { k.AnnounceSentAt = now; return true, nil })
		if err == nil {
			w.announce(ctx, k)
		}
		errs = append(errs, err)
	}
	return d.Pending, errors.Join(errs...)
}
