package repl

import (
	"slices"
	"strings"
	"time"
)

// Deletion: a key (primary, once it has no replicas) or a replica is
// scheduled for deletion after a waiting period and can be cancelled until
// then; a replica tells its primary by key.status at each step, and its
// record stays as a tombstone until the primary acknowledges the deletion.

// ScheduleDeletion schedules k's deletion at now+wait. A primary with
// replicas that hold it or are being created (live: the shell adds those
// with a run in flight) must delete them first. A replica's change is
// numbered for its primary (StatusSeq).
func ScheduleDeletion(k *Key, wait time.Duration, inFlight []string, now time.Time) *RequestError {
	switch k.KeyState {
	case KeyPendingDeletion:
		return Conflict("key %s is already pending deletion (on %s)", k.KeyID, k.DeletionDate.Format(time.RFC3339))
	case KeyUpdating:
		return Conflict("key %s is changing its primary region; wait until it is done", k.KeyID)
	}
	if k.Role == Primary {
		var live []string
		for _, r := range k.Replicas {
			if k.HoldsAny(r.Region) || slices.Contains(inFlight, r.Region) {
				live = append(live, r.Region)
			}
		}
		slices.Sort(live)
		if len(live) > 0 {
			return Conflict("key %s is a primary with replicas in %s; delete them first", k.KeyID, strings.Join(live, ", "))
		}
	} else {
		k.StatusSeq++
		k.StatusSentAt = now
	}
	d := now.Add(wait)
	k.KeyState, k.DeletionDate, k.UpdatedAt = KeyPendingDeletion, &d, now
	return nil
}

// CancelDeletion cancels k's scheduled deletion at now.
func CancelDeletion(k *Key, now time.Time) *RequestError {
	if k.KeyState != KeyPendingDeletion {
		return Conflict("key %s is not pending deletion", k.KeyID)
	}
	if k.Role == ReplicaRole {
		k.StatusSeq++
		k.StatusSentAt = now
	}
	k.KeyState, k.DeletionDate, k.UpdatedAt = KeyEnabled, nil, now
	return nil
}

// Tombstone turns a replica whose versions the HSM destroyed into its
// tombstone at now; it reports whether k changed. (A primary's record is
// removed instead.)
func Tombstone(k *Key, now time.Time) bool {
	if k.Deleted || k.KeyState != KeyPendingDeletion {
		return false
	}
	k.Deleted = true
	k.Versions, k.CurrentVersion, k.DeletionDate, k.Enabled = nil, 0, nil, false
	k.StatusSeq++
	k.StatusSentAt = now
	k.UpdatedAt = now
	return true
}
