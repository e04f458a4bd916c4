package repl

import (
	"bytes"
	"slices"
	"time"

	"github.com/mrkrepl/mrkrepl/messages"
)

// Changing the primary region is a signed hand-over:
//
//	old primary A                      new primary B
//	BeginHandover: UPDATING ──primary.handover──▶ TakeOver: PRIMARY, UPDATING
//	BecomeReplica ◀──primary.accept───
//	REPLICA of B ──key.status──▶ ApplyStatus: ENABLED (hand-over done)
//	A tells the other replicas (key.sync with primary B): a replica takes a
//	new primary only from the one it has.

// ReservationTimeout is how long a rotation's reservation of a version
// number holds off other rotations and hand-overs (generating a key takes
// milliseconds; a reservation this old was left by a crash).
const ReservationTimeout = time.Minute

// MaxHandoverDigests bounds the hand-overs remembered (one is sent per
// MessageTTL while the new primary does not answer; an accept answers one
// that is still valid, so a few suffice).
const MaxHandoverDigests = 8

// CanChangeShared checks that k's shared properties may change here: this
// region is its primary and it is neither changing primary nor being
// deleted.
func CanChangeShared(k *Key, cfg Config) *RequestError {
	if k.Role != Primary {
		return BadRequest("key %s is a replica in %s; its primary region is %s", k.KeyID, cfg.Region, k.PrimaryRegion)
	}
	switch k.KeyState {
	case KeyUpdating:
		return Conflict("key %s is handing its primary role over to %s", k.KeyID, k.PendingPrimary)
	case KeyPendingDeletion:
		return Conflict("key %s is pending deletion", k.KeyID)
	}
	return nil
}

// HandoverReady checks that target can take k over at now: it holds every
// version, no version is staged or being reserved, and no other replica is
// still being created, failed or has a run in flight (inFlight lists the
// replicas whose run is: the shell looks them up). The new primary must
// know every replica's versions.
func HandoverReady(k *Key, target string, inFlight []string, now time.Time) *RequestError {
	r, ok := k.Replica(target)
	if !ok || !k.HoldsAny(target) {
		return BadRequest("key %s has no replica in %s; replicate it there first", k.KeyID, target)
	}
	if r.State != ReplicaEnabled {
		return Conflict("the replica of key %s in %s is %s", k.KeyID, target, r.State)
	}
	if s := k.Staged(); s != 0 {
		return Conflict("key %s: version %d is staged; wait until it is current", k.KeyID, s)
	}
	if k.Reserved != 0 && now.Sub(k.ReservedAt) < ReservationTimeout {
		return Conflict("key %s is being rotated; wait until the new version is staged and current", k.KeyID)
	}
	for _, o := range k.Replicas {
		if k.LeftBehind(o) {
			continue // failed before it held anything: left behind
		}
		if o.State == ReplicaCreating || o.State == ReplicaFailed || !k.Complete(o.Region) {
			return Conflict("the replica of key %s in %s is %s; wait for it or delete it first", k.KeyID, o.Region, o.State)
		}
		if slices.Contains(inFlight, o.Region) {
			return Conflict("a replication of key %s to %s is in flight; wait for it", k.KeyID, o.Region)
		}
	}
	return nil
}

// BeginHandover starts handing k over to target (checked: CanChangeShared,
// HandoverReady) as hand-over id: the key is UPDATING, its epoch is
// bumped, and target's replica is UPDATING until it confirms.
func BeginHandover(k *Key, target, id string, now time.Time) {
	r, _ := k.Replica(target)
	r.State, r.UpdatedAt = ReplicaUpdating, now
	k.SetReplica(r)
	k.KeyState, k.PendingPrimary = KeyUpdating, target
	k.Epoch++
	k.HandoverID, k.HandoverSentAt = id, now
	k.UpdatedAt = now
}

// HandoverOf is the primary.handover that offers k to k.PendingPrimary:
// the key's state and the replicas the new primary takes over (this
// region among them; replicas left behind are not).
func HandoverOf(k *Key, cfg Config) *messages.Handover {
	replicas := []string{cfg.Region}
	for _, r := range k.Replicas {
		if r.Region != k.PendingPrimary && !k.LeftBehind(r) {
			replicas = append(replicas, r.Region)
		}
	}
	slices.Sort(replicas)
	return &messages.Handover{
		KeyID: k.KeyID, Epoch: k.Epoch, CurrentVersion: k.CurrentVersion, Versions: slices.Clone(k.Versions),
		Replicas: replicas, Description: k.Description,
	}
}

// RecordHandover remembers the digest of a hand-over about to leave (the
// accept must name one of these); it reports whether k changed (not if the
// hand-over handoverID is no longer in progress).
func RecordHandover(k *Key, handoverID string, digest []byte) bool {
	if k.HandoverID != handoverID {
		return false
	}
	k.HandoverDigests = append(k.HandoverDigests, digest)
	if n := len(k.HandoverDigests); n > MaxHandoverDigests {
		k.HandoverDigests = k.HandoverDigests[n-MaxHandoverDigests:]
	}
	return true
}

// HandoverVerdict is what the new primary makes of a hand-over.
type HandoverVerdict int

const (
	HandoverFresh HandoverVerdict = iota
	// HandoverAgain: taken over already (the accept was lost): accept again.
	HandoverAgain
	HandoverRefused
)

// CheckHandover judges a hand-over from src on this region's replica
// record k (nil if the key is not here).
func CheckHandover(k *Key, env *messages.Envelope, cfg Config) (HandoverVerdict, *Refusal) {
	m := &env.Message
	h := m.Handover
	if k == nil {
		return HandoverRefused, Refuse(ReasonStateMismatch, "hand-over of key %s, which has no replica in %s", h.KeyID, cfg.Region)
	}
	if k.Role == Primary && k.Epoch >= h.Epoch && k.HandoverID == m.ReplicationID {
		return HandoverAgain, nil
	}
	if k.Role != ReplicaRole || k.PrimaryRegion != m.Src {
		return HandoverRefused, Refuse(ReasonNotPrimary, "hand-over of key %s from %s; its primary is %s", h.KeyID, m.Src, k.PrimaryRegion)
	}
	if k.KeyState == KeyPendingDeletion {
		// Its status told the old primary, which calls the hand-over off.
		return HandoverRefused, Refuse(ReasonStateMismatch, "hand-over of key %s, which is pending deletion in %s", h.KeyID, cfg.Region)
	}
	if h.Epoch <= k.Epoch {
		return HandoverRefused, Refuse(ReasonStateMismatch, "hand-over of key %s at epoch %d; this replica holds epoch %d", h.KeyID, h.Epoch, k.Epoch)
	}
	if r := CheckEpoch(k.Epoch, h.Epoch); r != nil {
		return HandoverRefused, r
	}
	for _, v := range h.Versions {
		if !slices.Contains(k.Versions, v) {
			return HandoverRefused, Refuse(ReasonStateMismatch, "hand-over of key %s: version %d is not held in %s", h.KeyID, v, cfg.Region)
		}
	}
	return HandoverFresh, nil
}

// TakeOver makes this region k's primary after a checked hand-over: the
// key is PRIMARY and UPDATING until the old primary reports as a replica,
// with the replicas and versions the hand-over names.
func TakeOver(k *Key, env *messages.Envelope, cfg Config, now time.Time) *Refusal {
	m := &env.Message
	h := m.Handover
	if k.Role != ReplicaRole || k.PrimaryRegion != m.Src || h.Epoch <= k.Epoch || k.KeyState != KeyEnabled {
		return Refuse(ReasonStateMismatch, "key %s changed meanwhile", h.KeyID)
	}
	holding := append(slices.Clone(h.Replicas), cfg.Region)
	slices.Sort(holding)
	k.VersionDetails = TakeOverDetails(k.VersionDates, h.Versions, h.CurrentVersion, holding, now)
	k.VersionDates = nil
	k.Replicas = nil
	k.SyncSent = map[string]SyncSent{}
	for _, r := range h.Replicas {
		state := ReplicaEnabled
		if r == m.Src {
			state = ReplicaUpdating // until it confirms being a replica
		}
		k.Replicas = append(k.Replicas, Replica{Region: r, State: state, UpdatedAt: now})
		// Replicas hear of this region from the old primary first; resend
		// only if they do not report within MessageTTL.
		k.SyncSent[r] = SyncSent{Epoch: h.Epoch, At: now}
	}
	k.Role, k.PrimaryRegion, k.KeyState = Primary, cfg.Region, KeyUpdating
	k.Epoch, k.CurrentVersion, k.Description = h.Epoch, h.CurrentVersion, h.Description
	k.HandoverID = m.ReplicationID
	k.StatusSeq, k.StatusAcked, k.Announce = 0, 0, nil
	k.UpdatedAt = now
	return nil
}

// AcceptOf is the primary.accept that answers the hand-over in env.
func AcceptOf(k *Key, handover *messages.Envelope) *messages.Accept {
	return &messages.Accept{HandoverDigest: handover.Digest, KeyID: k.KeyID, Epoch: handover.Message.Handover.Epoch}
}

// AcceptVerdict is what the old primary makes of an accept.
type AcceptVerdict int

const (
	AcceptFresh AcceptVerdict = iota
	AcceptDuplicate
	AcceptRefused
)

// CheckAccept judges an accept on the old primary's record k.
func CheckAccept(k *Key, env *messages.Envelope) (AcceptVerdict, *Refusal) {
	m := &env.Message
	a := m.Accept
	if k.Role == ReplicaRole && k.PrimaryRegion == m.Src && k.Epoch >= a.Epoch {
		return AcceptDuplicate, nil
	}
	if k.Role != Primary || k.KeyState != KeyUpdating || k.PendingPrimary != m.Src ||
		k.HandoverID != m.ReplicationID || k.Epoch != a.Epoch ||
		!slices.ContainsFunc(k.HandoverDigests, func(d []byte) bool { return bytes.Equal(d, a.HandoverDigest) }) {
		return AcceptRefused, Refuse(ReasonStateMismatch, "accept from %s does not answer the hand-over of key %s in progress", m.Src, a.KeyID)
	}
	return AcceptFresh, nil
}

// BecomeReplica makes the old primary a replica of the region that
// accepted (src): the replicas still to be told of the new primary go in
// k.Announce, and a status tells the new primary.
func BecomeReplica(k *Key, src, handoverID string, now time.Time) *Refusal {
	if k.Role != Primary || k.HandoverID != handoverID {
		return Refuse(ReasonStateMismatch, "key %s changed meanwhile", k.KeyID)
	}
	k.Announce = nil
	for _, r := range k.Replicas {
		if r.Region != src && !k.LeftBehind(r) {
			k.Announce = append(k.Announce, r.Region)
		}
	}
	k.AnnounceEpoch, k.AnnounceSentAt = k.Epoch, now
	k.Role, k.PrimaryRegion, k.KeyState, k.PendingPrimary = ReplicaRole, src, KeyEnabled, ""
	k.KeepDates()
	k.Replicas, k.VersionDetails, k.SyncSent, k.HandoverID, k.HandoverDigests = nil, nil, nil, "", nil
	k.StatusSeq++ // tell the new primary this region is its replica now
	k.StatusSentAt = now
	k.UpdatedAt = now
	return nil
}
