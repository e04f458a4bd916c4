package repl

import (
	"slices"
	"time"
)

// The pure rules of the key model: which region holds which version (the
// replicated-to watermark), which version a replica still needs, and when a
// staged version becomes current. They work on the primary's record.

// Normalize fills in what records written before the lifecycle fields
// existed lack: key state, epoch and the per-version watermark (the
// primary's ENABLED replicas then held every version).
func (k *Key) Normalize() {
	if k.KeyState == "" {
		k.KeyState = KeyEnabled
	}
	if k.Epoch == 0 {
		k.Epoch = 1
	}
	if k.Role != Primary || len(k.VersionDetails) > 0 {
		return
	}
	holders := []string{k.Region}
	for _, r := range k.Replicas {
		if r.State == ReplicaEnabled {
			holders = append(holders, r.Region)
		}
	}
	slices.Sort(holders)
	for _, v := range k.Versions {
		st := VersionPrevious
		if v == k.CurrentVersion {
			st = VersionCurrent
		}
		k.VersionDetails = append(k.VersionDetails, KeyVersion{
			Version: v, State: st, ReplicatedTo: slices.Clone(holders), CreatedAt: k.CreatedAt,
		})
	}
}

// Version returns the details of version v, or nil.
func (k *Key) Version(v uint32) *KeyVersion {
	for i := range k.VersionDetails {
		if k.VersionDetails[i].Version == v {
			return &k.VersionDetails[i]
		}
	}
	return nil
}

// Replica returns the record of region's replica.
func (k *Key) Replica(region string) (Replica, bool) {
	for _, r := range k.Replicas {
		if r.Region == region {
			return r, true
		}
	}
	return Replica{}, false
}

// SetReplica records the state of one replica in the primary's key record.
func (k *Key) SetReplica(r Replica) {
	for i := range k.Replicas {
		if k.Replicas[i].Region == r.Region {
			k.Replicas[i] = r
			return
		}
	}
	k.Replicas = append(k.Replicas, r)
}

// Holds reports whether region confirmed holding version v.
func (k *Key) Holds(region string, v uint32) bool {
	d := k.Version(v)
	return d != nil && slices.Contains(d.ReplicatedTo, region)
}

// HoldsAny reports whether region holds any version of k.
func (k *Key) HoldsAny(region string) bool {
	for _, d := range k.VersionDetails {
		if slices.Contains(d.ReplicatedTo, region) {
			return true
		}
	}
	return false
}

// MarkHeld records that region holds version v.
func (k *Key) MarkHeld(region string, v uint32) {
	d := k.Version(v)
	if d == nil || slices.Contains(d.ReplicatedTo, region) {
		return
	}
	d.ReplicatedTo = append(d.ReplicatedTo, region)
	slices.Sort(d.ReplicatedTo)
}

// Forget drops region from every version's watermark (its replica is gone).
func (k *Key) Forget(region string) {
	for i := range k.VersionDetails {
		d := &k.VersionDetails[i]
		d.ReplicatedTo = slices.DeleteFunc(d.ReplicatedTo, func(r string) bool { return r == region })
	}
}

// Missing lists the versions region does not hold yet, in the order they
// are copied: the current version first (it makes a new replica usable),
// then the others in ascending order.
func (k *Key) Missing(region string) []uint32 {
	var out []uint32
	if !k.Holds(region, k.CurrentVersion) {
		out = append(out, k.CurrentVersion)
	}
	for _, d := range k.VersionDetails {
		if d.Version != k.CurrentVersion && !slices.Contains(d.ReplicatedTo, region) {
			out = append(out, d.Version)
		}
	}
	return out
}

// Complete reports whether region holds every version that is not staged:
// then it decrypts everything the key ever encrypted.
func (k *Key) Complete(region string) bool {
	for _, d := range k.VersionDetails {
		if d.State != VersionStaged && !slices.Contains(d.ReplicatedTo, region) {
			return false
		}
	}
	return true
}

// Staged returns the version being rotated in, or 0.
func (k *Key) Staged() uint32 {
	for _, d := range k.VersionDetails {
		if d.State == VersionStaged {
			return d.Version
		}
	}
	return 0
}

// Holders lists the replica regions that hold at least one version: the
// ones a staged version must reach before it becomes current. A replica
// still being created (holding nothing) does not hold a rotation back; it
// receives every version anyway. Nor does one pending deletion: if its
// deletion is cancelled, it lacks the current version and gets it then.
func (k *Key) Holders() []string {
	var out []string
	for _, r := range k.Replicas {
		if k.HoldsAny(r.Region) && r.State != ReplicaPendingDeletion {
			out = append(out, r.Region)
		}
	}
	return out
}

// WaitingFor lists the holders that lack the staged version v.
func (k *Key) WaitingFor(v uint32) []string {
	var out []string
	for _, r := range k.Holders() {
		if !k.Holds(r, v) {
			out = append(out, r)
		}
	}
	return out
}

// TryActivate makes the staged version current if every holder has
// confirmed it, and bumps the epoch; it returns the version activated or 0.
func (k *Key) TryActivate(now time.Time) uint32 {
	v := k.Staged()
	if v == 0 || len(k.WaitingFor(v)) > 0 {
		return 0
	}
	for i := range k.VersionDetails {
		d := &k.VersionDetails[i]
		switch {
		case d.Version == v:
			d.State = VersionCurrent
			d.ActivatedAt = &now
		case d.State == VersionCurrent:
			d.State = VersionPrevious
		}
	}
	k.CurrentVersion = v
	k.Epoch++
	k.UpdatedAt = now
	return v
}

// NeedsSync reports whether replica r should be sent the key's shared
// state: it holds the key and has not confirmed the current epoch.
func (k *Key) NeedsSync(r Replica) bool {
	return r.SyncedEpoch < k.Epoch && k.HoldsAny(r.Region)
}

// AnyNeedsSync reports whether some replica needs a sync.
func (k *Key) AnyNeedsSync() bool {
	return slices.ContainsFunc(k.Replicas, k.NeedsSync)
}

// AddVersion inserts v into a sorted version list.
func AddVersion(vs []uint32, v uint32) []uint32 {
	i, found := slices.BinarySearch(vs, v)
	if found {
		return vs
	}
	return slices.Insert(vs, i, v)
}

// ReplicaState is the state the primary shows for region's replica, given
// the state it had: ENABLED once it holds every version that is not staged,
// CREATING before; PENDING_DELETION and UPDATING stay until the replica or
// the hand-over changes them.
func (k *Key) ReplicaState(region string, prev ReplicaState) ReplicaState {
	if prev == ReplicaPendingDeletion || prev == ReplicaUpdating {
		return prev
	}
	if k.HoldsAny(region) && k.Complete(region) {
		return ReplicaEnabled
	}
	return ReplicaCreating
}

// NoteReceived records on a replica that v's material arrived at now,
// current at once if current is true.
func (k *Key) NoteReceived(v uint32, current bool, now time.Time) {
	if k.VersionDates == nil {
		k.VersionDates = map[uint32]VersionDates{}
	}
	if _, ok := k.VersionDates[v]; ok {
		return
	}
	now = now.UTC()
	d := VersionDates{CreatedAt: now}
	if current {
		d.ActivatedAt = &now
	}
	k.VersionDates[v] = d
}

// NoteActivated records on a replica that v became current at now (unless
// it already had).
func (k *Key) NoteActivated(v uint32, now time.Time) {
	d, ok := k.VersionDates[v]
	if !ok {
		d.CreatedAt = now // arrived before replicas kept dates
	}
	if d.ActivatedAt == nil {
		d.ActivatedAt = &now
	}
	if k.VersionDates == nil {
		k.VersionDates = map[uint32]VersionDates{}
	}
	k.VersionDates[v] = d
}

// KeepDates copies a primary's version dates into its own record before it
// becomes a replica, so that a later hand-over back keeps them.
func (k *Key) KeepDates() {
	k.VersionDates = map[uint32]VersionDates{}
	for _, d := range k.VersionDetails {
		k.VersionDates[d.Version] = VersionDates{CreatedAt: d.CreatedAt, ActivatedAt: d.ActivatedAt}
	}
}

// TakeOverDetails is a new primary's version details after a hand-over:
// each version in versions with its state (current is CURRENT, the others
// PREVIOUS), the regions holding it, and the dates the replica recorded; a
// version it has no dates for (a record older than them) gets now as its
// created_at, and now as its activated_at if current; a PREVIOUS version
// it never saw current gets none.
func TakeOverDetails(dates map[uint32]VersionDates, versions []uint32, current uint32, holding []string, now time.Time) []KeyVersion {
	var out []KeyVersion
	for _, v := range versions {
		d, ok := dates[v]
		if !ok {
			d.CreatedAt = now
		}
		st := VersionPrevious
		if v == current {
			st = VersionCurrent
			if d.ActivatedAt == nil {
				d.ActivatedAt = &now // it encrypts from now on
			}
		}
		out = append(out, KeyVersion{
			Version: v, State: st, ReplicatedTo: slices.Clone(holding), CreatedAt: d.CreatedAt, ActivatedAt: d.ActivatedAt,
		})
	}
	return out
}

// AllRegions lists the key's primary and replica regions, sorted.
func (k *Key) AllRegions() []string {
	rs := []string{k.PrimaryRegion}
	for _, r := range k.Replicas {
		rs = append(rs, r.Region)
	}
	slices.Sort(rs)
	return rs
}

// LeftBehind reports whether a hand-over leaves replica r out: one whose
// first copy failed (it holds nothing and has no run in flight), to be
// replicated again from the new primary if wanted.
func (k *Key) LeftBehind(r Replica) bool {
	return r.State == ReplicaFailed && !k.HoldsAny(r.Region)
}
