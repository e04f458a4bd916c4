package repl

import (
	"slices"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/messages"
)

// Replicas are kept in step with their primary by two messages:
//
//	primary                                  replica
//	SyncDue        ──key.sync (epoch, primary, current version)──▶ ApplySync
//	ApplyStatus    ◀──key.status (epoch held, state, versions)────
//
// A status answers every sync; a replica also sends one unprompted when
// its own state changes (deletion scheduled, cancelled, done; new primary),
// and the primary acknowledges that with a sync. Both sides resend what was
// not acknowledged after MessageTTL.

// SyncDue lists the replicas of k that should be sent a key.sync at now
// (they hold the key, have not confirmed its epoch, and were not sent one
// for it within cfg.MessageTTL) and records them as sent. A replica, or a
// primary handing over (the epoch of a hand-over is announced with the new
// primary's name, after the accept), sends none.
func SyncDue(k *Key, cfg Config, now time.Time) []string {
	if k.Role != Primary || k.PendingPrimary != "" {
		return nil
	}
	var due []string
	for _, r := range k.Replicas {
		last := k.SyncSent[r.Region]
		if k.NeedsSync(r) && (last.Epoch < k.Epoch || now.Sub(last.At) >= cfg.MessageTTL) {
			due = append(due, r.Region)
		}
	}
	if len(due) == 0 {
		return nil
	}
	if k.SyncSent == nil {
		k.SyncSent = map[string]SyncSent{}
	}
	for _, r := range due {
		k.SyncSent[r] = SyncSent{Epoch: k.Epoch, At: now}
	}
	return due
}

// SyncOf is the key.sync that carries k's shared state to a replica,
// acknowledging its statuses up to ack.
func SyncOf(k *Key, ack uint64) *messages.Sync {
	return &messages.Sync{
		KeyID: k.KeyID, Epoch: k.Epoch, PrimaryRegion: k.PrimaryRegion, CurrentVersion: k.CurrentVersion,
		Versions: slices.Clone(k.Versions), Description: k.Description, AckStatusSeq: ack,
	}
}

// AckSyncOf is the sync that acknowledges an unprompted status with the
// key's state. During a hand-over it carries the epoch before it: the
// hand-over's epoch goes out only with the new primary's name (announce).
func AckSyncOf(k *Key, ack uint64) *messages.Sync {
	s := SyncOf(k, ack)
	if k.PendingPrimary != "" {
		s.Epoch--
	}
	return s
}

// StatusOf is the key.status a replica sends: in answer to the sync with
// syncDigest, or unprompted (syncDigest nil).
func StatusOf(k *Key, syncDigest []byte) *messages.Status {
	st := &messages.Status{
		KeyID: k.KeyID, Epoch: k.Epoch, PrimaryRegion: k.PrimaryRegion, StatusSeq: k.StatusSeq,
		State: messages.ReplicaStateEnabled, Versions: slices.Clone(k.Versions), SyncDigest: syncDigest,
	}
	switch {
	case k.Deleted:
		st.State, st.Versions = messages.ReplicaStateDeleted, nil
	case k.KeyState == KeyPendingDeletion && k.DeletionDate != nil:
		st.State, st.DeletionDate = messages.ReplicaStatePendingDeletion, k.DeletionDate.UnixMilli()
	}
	return st
}

// CheckSync checks a sync from src against the replica's record k (nil
// if the key is not here: the shell answers with a DELETED status).
func CheckSync(k *Key, src string, s *messages.Sync, cfg Config) *Refusal {
	if s.PrimaryRegion == cfg.Region {
		return Refuse(ReasonStateMismatch, "sync names %s as primary; only a hand-over makes it primary", cfg.Region)
	}
	if k == nil {
		return nil
	}
	if k.Role == Primary {
		return Refuse(ReasonStateMismatch, "sync from %s for key %s, which is primary in %s", src, s.KeyID, cfg.Region)
	}
	if k.PrimaryRegion != src {
		return Refuse(ReasonNotPrimary, "sync from %s; the primary of key %s is %s", src, s.KeyID, k.PrimaryRegion)
	}
	return CheckEpoch(k.Epoch, s.Epoch)
}

// SyncNamesNewPrimary reports whether s would give k a new primary (a duty
// the shell records in the pending index before applying it).
func SyncNamesNewPrimary(k *Key, s *messages.Sync) bool {
	return s.Epoch > k.Epoch && s.PrimaryRegion != k.PrimaryRegion
}

// SyncOutcome is what ApplySync did.
type SyncOutcome struct {
	Changed    bool
	Activated  uint32 // a version became current here
	NewPrimary string // the key has a new primary: tell it of this replica
	Purge      bool   // a tombstone whose deletion the primary acknowledged: remove the record
}

// ApplySync applies a checked sync (CheckSync) to the replica's record k
// at now: the acknowledgement of its statuses, and the primary's state if
// newer and the current version is at hand (otherwise the old epoch stays,
// so that the primary sees it and sends the version).
func ApplySync(k *Key, s *messages.Sync, now time.Time) SyncOutcome {
	var out SyncOutcome
	if s.AckStatusSeq > k.StatusAcked && k.StatusAcked < k.StatusSeq {
		k.StatusAcked = min(s.AckStatusSeq, k.StatusSeq)
		out.Changed = true
	}
	if k.Deleted {
		out.Purge = k.StatusAcked >= k.StatusSeq
		return out
	}
	if s.Epoch > k.Epoch && slices.Contains(k.Versions, s.CurrentVersion) {
		if k.CurrentVersion != s.CurrentVersion {
			out.Activated = s.CurrentVersion
			k.NoteActivated(out.Activated, now.UTC())
		}
		if k.PrimaryRegion != s.PrimaryRegion {
			out.NewPrimary = s.PrimaryRegion
			k.StatusSeq++ // tell the new primary about this replica
			k.StatusSentAt = now
		}
		k.Epoch, k.PrimaryRegion, k.Description, k.CurrentVersion = s.Epoch, s.PrimaryRegion, s.Description, s.CurrentVersion
		k.UpdatedAt = now
		out.Changed = true
	}
	return out
}

// StatusOutcome is what ApplyStatus did.
type StatusOutcome struct {
	Changed   bool
	Events    []api.Event // what changed, for the audit stream
	Activated uint32      // a staged version became current
	Lost      []uint32    // versions credited to the replica that it reports it lacks
}

// ApplyStatus applies a status from replica src to the primary's record
// k at now (self is this region): the replica's epoch, its own state
// (deleted, pending deletion, enabled), versions it lost, and the end of a
// hand-over to this region. A status from a region with no replica here
// changes nothing.
func ApplyStatus(k *Key, src string, st *messages.Status, cfg Config, now time.Time) StatusOutcome {
	var out StatusOutcome
	r, ok := k.Replica(src)
	if !ok || k.Role != Primary {
		return out
	}
	self := cfg.Region
	if k.KeyState == KeyUpdating && k.PendingPrimary == "" && r.State == ReplicaUpdating &&
		st.PrimaryRegion == self && st.Epoch >= k.Epoch {
		// This region took the key over, and the old primary now says it
		// is a replica of this one: the hand-over is done.
		k.KeyState = KeyEnabled
		r.State = k.ReplicaState(src, "")
		out.Events = append(out.Events, api.Event{Type: api.EventPrimaryUpdated, KeyID: k.KeyID, Peer: src, Regions: []string{src, self}})
		out.Changed = true
	}
	if st.PrimaryRegion == self && st.Epoch != r.SyncedEpoch && (len(st.SyncDigest) > 0 || st.Epoch > r.SyncedEpoch) {
		// Its epoch as it says: higher after a sync, or lower than
		// credited (a late sync took it back): then it is synced again.
		if st.Epoch < r.SyncedEpoch {
			delete(k.SyncSent, src) // sync it again now
		}
		r.SyncedEpoch = min(st.Epoch, k.Epoch)
		out.Changed = true
	}
	if st.StatusSeq > r.StatusSeq {
		r.StatusSeq = st.StatusSeq
		out.Changed = true
		switch st.State {
		case messages.ReplicaStateDeleted:
			k.Replicas = slices.DeleteFunc(k.Replicas, func(x Replica) bool { return x.Region == src })
			k.Forget(src)
			delete(k.SyncSent, src)
			out.Events = append(out.Events, api.Event{Type: api.EventReplicaDeleted, KeyID: k.KeyID, Peer: src})
			if k.PendingPrimary == src {
				out.Events = append(out.Events, AbortHandover(k, "the new primary's replica was deleted"))
			}
			out.Activated = k.TryActivate(now) // it may have been the last one waited for
			k.UpdatedAt = now
			return out
		case messages.ReplicaStatePendingDeletion:
			d := time.UnixMilli(st.DeletionDate).UTC()
			if r.State != ReplicaPendingDeletion {
				out.Events = append(out.Events, api.Event{Type: api.EventReplicaDeletionScheduled, KeyID: k.KeyID, Peer: src})
			}
			if k.PendingPrimary == src {
				// It will not take the key over (TakeOver refuses while
				// pending deletion): call the hand-over off.
				out.Events = append(out.Events, AbortHandover(k, "the new primary's replica is pending deletion"))
			}
			r.State, r.DeletionDate = ReplicaPendingDeletion, &d
		default: // ENABLED
			if r.State == ReplicaPendingDeletion {
				out.Events = append(out.Events, api.Event{Type: api.EventReplicaDeletionCancelled, KeyID: k.KeyID, Peer: src})
				r.State = ""
			}
			r.DeletionDate = nil
			r.State = k.ReplicaState(src, r.State)
		}
	}
	if st.State != messages.ReplicaStateDeleted && st.PrimaryRegion == self {
		// Versions the watermark credits to the replica that it does not
		// hold (lost, or restored from an old backup): copy again.
		for _, d := range k.VersionDetails {
			if slices.Contains(d.ReplicatedTo, src) && !slices.Contains(st.Versions, d.Version) {
				out.Lost = append(out.Lost, d.Version)
			}
		}
		for _, v := range out.Lost {
			d := k.Version(v)
			d.ReplicatedTo = slices.DeleteFunc(d.ReplicatedTo, func(x string) bool { return x == src })
			out.Changed = true
		}
		if len(out.Lost) > 0 {
			r.State = k.ReplicaState(src, r.State)
		}
	}
	if !out.Changed {
		return out
	}
	r.UpdatedAt = now
	k.SetReplica(r)
	// A replica that went pending deletion no longer holds a staged
	// version back (Holders).
	out.Activated = k.TryActivate(now)
	k.UpdatedAt = now
	return out
}

// AbortHandover calls off the hand-over in progress (the new primary
// cannot take the key): the key is ENABLED here again, still primary, and
// replicas are synced at the epoch the hand-over took. It returns the
// event that says so.
func AbortHandover(k *Key, why string) api.Event {
	target := k.PendingPrimary
	if r, ok := k.Replica(target); ok && r.State == ReplicaUpdating {
		r.State = k.ReplicaState(target, "")
		k.SetReplica(r)
	}
	k.KeyState, k.PendingPrimary, k.HandoverID, k.HandoverDigests = KeyEnabled, "", "", nil
	return api.Event{Type: api.EventPrimaryUpdateCancelled, KeyID: k.KeyID, Peer: target, Reason: why}
}

// CopyAfterStatus reports whether, after a status from src, the primary
// should copy versions src lacks (lost ones, or a rotation that went on
// while it was pending deletion, now cancelled).
func CopyAfterStatus(k *Key, src string) bool {
	r, ok := k.Replica(src)
	return ok && r.State != ReplicaFailed && r.State != ReplicaPendingDeletion &&
		k.KeyState == KeyEnabled && len(k.Missing(src)) > 0
}

// AnnounceAcked reports whether a status from src acknowledges the old
// primary's announcement of the new one (k is the old primary's record,
// a replica now); if so the shell drops src from k.Announce (DropAnnounce).
func AnnounceAcked(k *Key, src string, st *messages.Status) bool {
	if !slices.Contains(k.Announce, src) {
		return false // statuses cross a hand-over; nothing to do
	}
	return st.PrimaryRegion == k.PrimaryRegion && st.Epoch >= k.AnnounceEpoch
}

// DropAnnounce removes src from the replicas still to be told of the new
// primary; it reports whether k changed.
func DropAnnounce(k *Key, src string) bool {
	if !slices.Contains(k.Announce, src) {
		return false
	}
	k.Announce = slices.DeleteFunc(k.Announce, func(r string) bool { return r == src })
	return true
}
