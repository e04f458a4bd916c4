package repl

import (
	"fmt"
	"time"
)

// The sweeper's policy: when a run may be ended, and what follows a run
// that ended in a way a fresh run may cure.

// Deadline is when the sweeper may end run: a source run RunTimeout after
// it started, a destination run when it (and its RAKB) expires.
func Deadline(run *Run, cfg Config) time.Time {
	if run.Role == Source {
		return run.CreatedAt.Add(cfg.RunTimeout)
	}
	return run.ExpiresAt
}

// TimeOut is run ended FAILED (timed out) at now, if it is in flight and
// past its deadline; nil otherwise.
func TimeOut(run *Run, cfg Config, now time.Time) *Run {
	if run.Ended() || now.Before(Deadline(run, cfg)) {
		return nil
	}
	next := *run
	next.State = Failed
	next.TimedOut = true
	next.Reason = fmt.Sprintf("timed out in %s after %s", run.State, now.Sub(run.CreatedAt).Round(time.Second))
	next.UpdatedAt = now
	next.CompletedAt = &now
	return &next
}

// RetryKind is what Retry decides.
type RetryKind int

const (
	// RetryNothing: the replica has moved on (a newer run, a late receipt
	// delivered the version, the key or replica is gone).
	RetryNothing RetryKind = iota
	// RetryStart: start a fresh run for the same version, attempt Attempt.
	RetryStart
	// RetryGiveUp: mark the replica FAILED with Reason (GiveUp).
	RetryGiveUp
)

// RetryDecision is Retry's answer.
type RetryDecision struct {
	Kind    RetryKind
	Attempt int    // RetryStart
	Reason  string // RetryGiveUp
}

// Retry decides what follows a source run that ended Retryable: k is the
// key's record (nil if the key is gone). It may be repeated: once the
// replica has moved on, it decides RetryNothing.
func Retry(failed *Run, k *Key, cfg Config) RetryDecision {
	if k == nil || !stillFailing(k, failed) {
		return RetryDecision{Kind: RetryNothing}
	}
	if failed.Attempt < cfg.MaxAttempts {
		return RetryDecision{Kind: RetryStart, Attempt: failed.Attempt + 1}
	}
	return RetryDecision{Kind: RetryGiveUp, Reason: fmt.Sprintf("gave up after %d attempts: %s", failed.Attempt, failed.Reason)}
}

func stillFailing(k *Key, failed *Run) bool {
	r, ok := k.Replica(failed.Peer)
	return ok && r.ReplicationID == failed.ID && !k.Holds(failed.Peer, failed.Version)
}

// GiveUp marks failed's replica FAILED with reason, unless a newer run or
// a late receipt decided meanwhile; it reports whether k changed.
func GiveUp(k *Key, failed *Run, reason string, now time.Time) bool {
	if !stillFailing(k, failed) {
		return false
	}
	r, _ := k.Replica(failed.Peer)
	r.State, r.Reason, r.UpdatedAt = ReplicaFailed, reason, now
	k.SetReplica(r)
	k.UpdatedAt = now
	return true
}

// TombstoneLifetime bounds how long a deleted replica keeps reporting its
// deletion to a primary that does not acknowledge it.
const TombstoneLifetime = 24 * time.Hour

// KeyDuties is the lifecycle work due for one key at a sweep.
type KeyDuties struct {
	// Pending: work remains (the key's entry in the pending index stays).
	Pending bool
	// Delete: the deletion date has come; the shell destroys the versions
	// and removes the record (a primary) or makes it a tombstone (a
	// replica), then sweeps the key again.
	Delete bool
	// ResendHandover: the hand-over was not accepted within MessageTTL.
	ResendHandover bool
	// Copy lists replicas that lack versions: the shell starts a run for
	// each that has none in flight.
	Copy []string
	// Activate: a staged version has nobody left to wait for (a receipt or
	// status that should have activated it was cut short).
	Activate bool
	// Sync: send key.sync where due (SyncDue).
	Sync bool
	// ResendStatus: a replica's status was not acknowledged within
	// MessageTTL.
	ResendStatus bool
	// ResendAnnounce: replicas not yet told of the new primary.
	ResendAnnounce bool
	// DropTombstone: the tombstone was acknowledged (or is older than
	// TombstoneLifetime, Abandoned): remove the record.
	DropTombstone, Abandoned bool
}

// Duties decides the lifecycle work due for k at now: resend what was not
// acknowledged within MessageTTL, delete when the date has come, restart
// the copy of versions a replica lacks.
func Duties(k *Key, cfg Config, now time.Time) KeyDuties {
	var d KeyDuties
	due := func(t time.Time) bool { return now.Sub(t) >= cfg.MessageTTL }
	if k.KeyState == KeyPendingDeletion && !k.Deleted {
		d.Pending = true
		if k.DeletionDate != nil && !now.Before(*k.DeletionDate) {
			return KeyDuties{Pending: true, Delete: true}
		}
	}
	switch k.Role {
	case Primary:
		if k.KeyState == KeyUpdating && k.PendingPrimary != "" {
			d.Pending = true
			d.ResendHandover = due(k.HandoverSentAt)
		}
		if k.KeyState == KeyUpdating && k.PendingPrimary == "" {
			d.Pending = true // new primary waiting for the old one's status
		}
		for _, r := range k.Replicas {
			if k.NeedsSync(r) {
				d.Pending = true
			}
			if r.State != ReplicaFailed && r.State != ReplicaPendingDeletion && len(k.Missing(r.Region)) > 0 {
				d.Pending = true
				d.Copy = append(d.Copy, r.Region)
			}
		}
		if s := k.Staged(); s != 0 {
			d.Pending = true
			d.Activate = len(k.WaitingFor(s)) == 0
		}
		d.Sync = d.Pending
	case ReplicaRole:
		if k.Deleted && now.Sub(k.UpdatedAt) > TombstoneLifetime {
			// Never acknowledged (the primary is gone too): give up.
			return KeyDuties{DropTombstone: true, Abandoned: true}
		}
		if k.StatusSeq > k.StatusAcked {
			d.Pending = true
			d.ResendStatus = due(k.StatusSentAt)
		} else if k.Deleted {
			return KeyDuties{DropTombstone: true} // acknowledged: the tombstone can go
		}
		if len(k.Announce) > 0 {
			d.Pending = true
			d.ResendAnnounce = due(k.AnnounceSentAt)
		}
	}
	return d
}
