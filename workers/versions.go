package workers

import (
	"slices"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
)

// This file holds the pure rules of the key model: which region holds which
// version (the replicated-to watermark), which version a replica still
// needs, and when a staged version becomes current. They work on the
// primary's record and do no I/O, so they are unit-tested directly.

// normalize fills in what records written before the lifecycle fields
// existed lack: key state, epoch and the per-version watermark (the
// primary's ENABLED replicas then held every version).
func normalize(k *keyRecord) {
	if k.KeyState == "" {
		k.KeyState = api.KeyStateEnabled
	}
	if k.Epoch == 0 {
		k.Epoch = 1
	}
	if k.Role != api.RolePrimary || len(k.VersionDetails) > 0 {
		return
	}
	holders := []string{k.Region}
	for _, r := range k.Replicas {
		if r.State == api.ReplicaEnabled {
			holders = append(holders, r.Region)
		}
	}
	slices.Sort(holders)
	for _, v := range k.Versions {
		st := api.VersionPrevious
		if v == k.CurrentVersion {
			st = api.VersionCurrent
		}
		k.VersionDetails = append(k.VersionDetails, api.KeyVersion{
			Version: v, State: st, ReplicatedTo: slices.Clone(holders), CreatedAt: k.CreatedAt,
		})
	}
}

func versionDetail(k *api.Key, v uint32) *api.KeyVersion {
	for i := range k.VersionDetails {
		if k.VersionDetails[i].Version == v {
			return &k.VersionDetails[i]
		}
	}
	return nil
}

// holds reports whether region confirmed holding version v.
func holds(k *api.Key, region string, v uint32) bool {
	d := versionDetail(k, v)
	return d != nil && slices.Contains(d.ReplicatedTo, region)
}

// holdsAny reports whether region holds any version of k.
func holdsAny(k *api.Key, region string) bool {
	for _, d := range k.VersionDetails {
		if slices.Contains(d.ReplicatedTo, region) {
			return true
		}
	}
	return false
}

// markHeld records that region holds version v.
func markHeld(k *api.Key, region string, v uint32) {
	d := versionDetail(k, v)
	if d == nil || slices.Contains(d.ReplicatedTo, region) {
		return
	}
	d.ReplicatedTo = append(d.ReplicatedTo, region)
	slices.Sort(d.ReplicatedTo)
}

// forget drops region from every version's watermark (its replica is gone).
func forget(k *api.Key, region string) {
	for i := range k.VersionDetails {
		d := &k.VersionDetails[i]
		d.ReplicatedTo = slices.DeleteFunc(d.ReplicatedTo, func(r string) bool { return r == region })
	}
}

// missingVersions lists the versions region does not hold yet, in the
// order they are copied: the current version first (it makes a new replica
// usable), then the others in ascending order.
func missingVersions(k *api.Key, region string) []uint32 {
	var out []uint32
	if !holds(k, region, k.CurrentVersion) {
		out = append(out, k.CurrentVersion)
	}
	for _, d := range k.VersionDetails {
		if d.Version != k.CurrentVersion && !slices.Contains(d.ReplicatedTo, region) {
			out = append(out, d.Version)
		}
	}
	return out
}

// complete reports whether region holds every version that is not staged:
// then it decrypts everything the key ever encrypted.
func complete(k *api.Key, region string) bool {
	for _, d := range k.VersionDetails {
		if d.State != api.VersionStaged && !slices.Contains(d.ReplicatedTo, region) {
			return false
		}
	}
	return true
}

// stagedVersion returns the version being rotated in, or 0.
func stagedVersion(k *api.Key) uint32 {
	for _, d := range k.VersionDetails {
		if d.State == api.VersionStaged {
			return d.Version
		}
	}
	return 0
}

// holders lists the replica regions that hold at least one version: the
// ones a staged version must reach before it becomes current. A replica
// still being created (holding nothing) does not hold a rotation back; it
// receives every version anyway. Nor does one pending deletion: if its
// deletion is cancelled, it lacks the current version and gets it then.
func holders(k *api.Key) []string {
	var out []string
	for _, r := range k.Replicas {
		if holdsAny(k, r.Region) && r.State != api.ReplicaPendingDeletion {
			out = append(out, r.Region)
		}
	}
	return out
}

// waitingFor lists the holders that lack the staged version v.
func waitingFor(k *api.Key, v uint32) []string {
	var out []string
	for _, r := range holders(k) {
		if !holds(k, r, v) {
			out = append(out, r)
		}
	}
	return out
}

// tryActivate makes the staged version current if every holder has
// confirmed it, and bumps the epoch; it returns the version activated or 0.
func tryActivate(k *api.Key, now time.Time) uint32 {
	v := stagedVersion(k)
	if v == 0 || len(waitingFor(k, v)) > 0 {
		return 0
	}
	for i := range k.VersionDetails {
		d := &k.VersionDetails[i]
		switch {
		case d.Version == v:
			d.State = api.VersionCurrent
			d.ActivatedAt = &now
		case d.State == api.VersionCurrent:
			d.State = api.VersionPrevious
		}
	}
	k.CurrentVersion = v
	k.Epoch++
	k.UpdatedAt = now
	return v
}

// needsSync reports whether replica r should be sent the key's shared
// state: it holds the key and has not confirmed the current epoch.
func needsSync(k *api.Key, r api.Replica) bool {
	return r.SyncedEpoch < k.Epoch && holdsAny(k, r.Region)
}

// addVersion inserts v into a sorted version list.
func addVersion(vs []uint32, v uint32) []uint32 {
	i, found := slices.BinarySearch(vs, v)
	if found {
		return vs
	}
	return slices.Insert(vs, i, v)
}

// replicaState is the state the primary shows for region's replica, given
// the state it had: ENABLED once it holds every version that is not staged,
// CREATING before; PENDING_DELETION and UPDATING stay until the replica or
// the hand-over changes them.
func replicaState(k *api.Key, region, prev string) string {
	if prev == api.ReplicaPendingDeletion || prev == api.ReplicaUpdating {
		return prev
	}
	if holdsAny(k, region) && complete(k, region) {
		return api.ReplicaEnabled
	}
	return api.ReplicaCreating
}

// versionDates is a replica's own record of a version's dates, kept so
// that a hand-over does not lose them: the signed hand-over carries
// versions, not dates. CreatedAt is when the version's material arrived in
// this region (or, in a former primary, when the primary made it);
// ActivatedAt when this region began to encrypt with it.
type versionDates struct {
	CreatedAt   time.Time  `json:"created_at"`
	ActivatedAt *time.Time `json:"activated_at,omitempty"`
}

// noteReceived records on a replica that v's material arrived at now,
// current at once if current is true.
func noteReceived(k *keyRecord, v uint32, current bool, now time.Time) {
	if k.VersionDates == nil {
		k.VersionDates = map[uint32]versionDates{}
	}
	if _, ok := k.VersionDates[v]; ok {
		return
	}
	now = now.UTC()
	d := versionDates{CreatedAt: now}
	if current {
		d.ActivatedAt = &now
	}
	k.VersionDates[v] = d
}

// noteActivated records on a replica that v became current at now (unless
// it already had).
func noteActivated(k *keyRecord, v uint32, now time.Time) {
	d, ok := k.VersionDates[v]
	if !ok {
		d.CreatedAt = now // arrived before replicas kept dates
	}
	if d.ActivatedAt == nil {
		d.ActivatedAt = &now
	}
	if k.VersionDates == nil {
		k.VersionDates = map[uint32]versionDates{}
	}
	k.VersionDates[v] = d
}

// keepDates copies a primary's version dates into its own record before it
// becomes a replica, so that a later hand-over back keeps them.
func keepDates(k *keyRecord) {
	k.VersionDates = map[uint32]versionDates{}
	for _, d := range k.VersionDetails {
		k.VersionDates[d.Version] = versionDates{CreatedAt: d.CreatedAt, ActivatedAt: d.ActivatedAt}
	}
}

// takeOverDetails is a new primary's version details after a hand-over:
// each version in versions with its state (current is CURRENT, the others
// PREVIOUS), the regions holding it, and the dates the replica recorded; a
// version it has no dates for (a record older than them) gets now as its
// created_at, and now as its activated_at if current; a PREVIOUS version
// it never saw current gets none.
func takeOverDetails(dates map[uint32]versionDates, versions []uint32, current uint32, holding []string, now time.Time) []api.KeyVersion {
	var out []api.KeyVersion
	for _, v := range versions {
		d, ok := dates[v]
		if !ok {
			d.CreatedAt = now
		}
		st := api.VersionPrevious
		if v == current {
			st = api.VersionCurrent
			if d.ActivatedAt == nil {
				d.ActivatedAt = &now // it encrypts from now on
			}
		}
		out = append(out, api.KeyVersion{
			Version: v, State: st, ReplicatedTo: slices.Clone(holding), CreatedAt: d.CreatedAt, ActivatedAt: d.ActivatedAt,
		})
	}
	return out
}
