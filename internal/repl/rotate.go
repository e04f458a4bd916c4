package repl

import (
	"slices"
	"strings"
	"time"

	"github.com/mrkrepl/mrkrepl/messages"
)

// Rotation: a primary reserves the next version number (so that two
// rotations never generate the same version), the shell generates it in
// the HSM, and RecordVersion stages it; it becomes current once every
// replica holding the key confirms it (TryActivate, RecordReceipt).

// Reserve reserves the next version number of k at now, or says why not.
func Reserve(k *Key, cfg Config, now time.Time) (uint32, *RequestError) {
	if e := CanChangeShared(k, cfg); e != nil {
		return 0, e
	}
	if s := k.Staged(); s != 0 {
		return 0, Conflict("key %s: version %d is still staged, waiting for %s", k.KeyID, s, strings.Join(k.WaitingFor(s), ", "))
	}
	if k.Reserved != 0 && now.Sub(k.ReservedAt) < ReservationTimeout {
		return 0, Conflict("key %s is being rotated by another request", k.KeyID)
	}
	if len(k.Versions) >= messages.MaxVersions {
		// key.sync, key.status and a hand-over list every version: one
		// more would not Seal (review L2).
		return 0, Conflict("key %s has %d versions, the most a key may have", k.KeyID, messages.MaxVersions)
	}
	next := slices.Max(k.Versions) + 1
	k.Reserved, k.ReservedAt = next, now
	return next, nil
}

// RecordVersion stages the reserved version next, generated in this
// region's HSM, at now; it returns the version activated at once (if no
// replica holds the key) or 0.
func RecordVersion(k *Key, next uint32, cfg Config, now time.Time) (uint32, *RequestError) {
	if k.Reserved != next || slices.Contains(k.Versions, next) {
		return 0, Conflict("key %s: the rotation to version %d was taken over meanwhile", k.KeyID, next)
	}
	if e := CanChangeShared(k, cfg); e != nil {
		return 0, e
	}
	k.Reserved, k.ReservedAt = 0, time.Time{}
	k.Versions = AddVersion(k.Versions, next)
	k.VersionDetails = append(k.VersionDetails, KeyVersion{
		Version: next, State: VersionStaged, ReplicatedTo: []string{cfg.Region}, CreatedAt: now,
	})
	k.UpdatedAt = now
	return k.TryActivate(now), nil
}

// Unreserve gives up the reservation of next (a rotation that could not
// record it); it reports whether k changed.
func Unreserve(k *Key, next uint32) bool {
	if k.Reserved != next {
		return false
	}
	k.Reserved, k.ReservedAt = 0, time.Time{}
	return true
}

// RotationTargets lists the replicas a staged version is copied to: not
// one never created (replicate to it again) or going away.
func RotationTargets(k *Key) []string {
	var out []string
	for _, r := range k.Replicas {
		if r.State == ReplicaFailed && !k.HoldsAny(r.Region) || r.State == ReplicaPendingDeletion {
			continue
		}
		out = append(out, r.Region)
	}
	return out
}
