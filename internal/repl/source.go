package repl

import (
	"bytes"
	"crypto/hmac"
	"fmt"
	"slices"
	"time"

	"github.com/mrkrepl/mrkrepl/messages"
)

// The source role of a run (docs/PROTOCOL.md):
//
//	source A                                destination B
//	Start: INIT_SENT              ─init─▶   OnInit → create RAKB → AfterRAKB: OFFER_SENT
//	OnOffer → wrap K → AfterWrap: MATERIAL_SENT ◀─offer─
//	                              ─material─▶ OnMaterial → unwrap → AfterUnwrap: COMPLETED
//	OnReceipt: compare key        ◀─receipt─
//	confirmation, COMPLETED/FAILED; RecordReceipt in the key

// CheckStart is the check of a request to copy k to dst, on the primary's
// record: the replica it finds (zero if dst has none yet).
func CheckStart(k *Key, dst string, cfg Config) (Replica, *RequestError) {
	if k.Role != Primary {
		return Replica{}, BadRequest("key %s is a replica in %s; replicate it from its primary region %s", k.KeyID, cfg.Region, k.PrimaryRegion)
	}
	switch k.KeyState {
	case KeyUpdating:
		return Replica{}, Conflict("key %s is handing its primary role over to %s; replicate it from there when done", k.KeyID, k.PendingPrimary)
	case KeyPendingDeletion:
		return Replica{}, Conflict("key %s is pending deletion in %s", k.KeyID, cfg.Region)
	}
	r, known := k.Replica(dst)
	if known && r.State == ReplicaPendingDeletion {
		return Replica{}, Conflict("the replica of key %s in %s is pending deletion; cancel the deletion there first", k.KeyID, dst)
	}
	return r, nil
}

// StartVersion is the version a new run copies to dst: version, or
// (version 0) the next one dst lacks; 0 with a nil error if dst holds every
// version (the shell answers with the replica's last run).
func StartVersion(k *Key, dst string, version uint32) (uint32, error) {
	if version == 0 {
		missing := k.Missing(dst)
		if len(missing) == 0 {
			return 0, nil
		}
		version = missing[0]
	}
	if k.Version(version) == nil {
		return 0, fmt.Errorf("key %s has no version %d", k.KeyID, version)
	}
	return version, nil
}

// Start is a new source run id that copies version of k to dst (attempt
// numbers the runs tried for it) and the init to seal and send. policy is
// the policy the init carries for the replica (Worker.replicaPolicy).
func Start(k *Key, dst string, version uint32, attempt int, id, policy string, cfg Config, now time.Time) (*Run, *messages.Message) {
	run := &Run{
		ID: id, Role: Source, KeyID: k.KeyID, Version: version,
		Peer: dst, State: InitSent, KeySpec: k.KeySpec, KeyUsage: k.KeyUsage,
		PrimaryRegion: cfg.Region, Description: k.Description,
		CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(cfg.ReplicationTTL), Attempt: attempt,
		Epoch: k.Epoch, WasCurrent: version == k.CurrentVersion,
	}
	m := cfg.NewMessage(messages.TypeInit, id, dst, now)
	m.Init = &messages.Init{
		KeyID: k.KeyID, KeySpec: k.KeySpec, KeyUsage: k.KeyUsage,
		Version: version, PrimaryRegion: cfg.Region, Policy: policy,
	}
	return run, m
}

// AttachRun records a stored run as the replica's run in flight (the
// compare-and-set on the key after the run is stored). otherInFlight says
// whether the replica's run, if it names another, is still in flight
// (the shell looks it up before each attempt): then that run won and
// lost is true, and nothing changes.
func AttachRun(k *Key, run *Run, otherInFlight bool, cfg Config, now time.Time) (lost bool, err *RequestError) {
	// Checked again on the record written: a hand-over or a deletion may
	// have begun since the run was started.
	if k.Role != Primary || k.KeyState != KeyEnabled {
		return false, Conflict("key %s is %s in %s (%s) now; no replication starts", k.KeyID, k.KeyState, cfg.Region, k.Role)
	}
	r, _ := k.Replica(run.Peer)
	if r.State == ReplicaPendingDeletion {
		return false, Conflict("the replica of key %s in %s is pending deletion; cancel the deletion there first", k.KeyID, run.Peer)
	}
	if r.ReplicationID != "" && r.ReplicationID != run.ID && otherInFlight {
		return true, nil // another request started a run meanwhile
	}
	k.SetReplica(Replica{
		Region: run.Peer, State: k.ReplicaState(run.Peer, r.State), ReplicationID: run.ID, SyncedEpoch: r.SyncedEpoch,
		StatusSeq: r.StatusSeq, DeletionDate: r.DeletionDate, UpdatedAt: now,
	})
	k.UpdatedAt = now
	return false, nil
}

// Wrap asks the shell to wrap K (Ref) for the destination's RAKB.
type Wrap struct {
	Ref     KeyRef
	PeerKey []byte // RAKB
	KDF     KDF
}

// OnOffer takes a Fresh offer (Match) for a source run: the wrap to ask
// of the HSM, or a refusal.
func OnOffer(run *Run, env *messages.Envelope, cfg Config, now time.Time) (Wrap, *Refusal) {
	m := &env.Message
	if !bytes.Equal(m.Offer.InitDigest, run.InitDigest) {
		return Wrap{}, Refuse(ReasonStateMismatch, "offer answers another init")
	}
	if run.Expired(now) {
		return Wrap{}, Refuse(ReasonRunExpired, "replication %s expired", run.ID)
	}
	return Wrap{
		Ref:     KeyRef{KeyID: run.KeyID, Version: run.Version},
		PeerKey: m.Offer.RAKB,
		KDF: KDF{
			Partition: cfg.Partition, SrcRegion: cfg.Region, DstRegion: run.Peer,
			SrcKID: run.SrcKID, DstKID: env.KID, RAKB: m.Offer.RAKB, ReplicationID: run.ID,
			KeyID: run.KeyID, Version: run.Version, InitDigest: run.InitDigest, OfferDigest: env.Digest,
		},
	}, nil
}

// AfterWrap is the run after the HSM wrapped K (raka, wrapped) for the
// offer in env, and the material to seal and send. Once sealed
// (Run.Record), the shell asks the HSM for the key confirmation over
// next.Transcript() and stores it in ExpectedKC before the run is written.
func AfterWrap(run *Run, env *messages.Envelope, raka, wrapped []byte, cfg Config, now time.Time) (*Run, *messages.Message) {
	reply := cfg.NewMessage(messages.TypeMaterial, run.ID, run.Peer, now)
	reply.Material = &messages.Material{
		OfferDigest: env.Digest, RAKA: raka, WrappedKey: wrapped,
		Properties: messages.Properties{KeySpec: run.KeySpec, KeyUsage: run.KeyUsage, Description: run.Description},
	}
	next := *run
	next.State = MaterialSent
	next.OfferDigest, next.OfferMsgID = env.Digest, env.Message.MsgID
	next.DstKID = env.KID
	next.UpdatedAt = now
	return &next, reply
}

// Transcript is the digest both sides compute key confirmations over.
func (r *Run) Transcript() []byte {
	return messages.TranscriptDigest(r.InitDigest, r.OfferDigest, r.MaterialDigest)
}

// ReasonAgreementKeyLost is a source run's reason when its destination
// answered agreement_key_lost.
const ReasonAgreementKeyLost = "destination reported " + messages.StatusAgreementKeyLost

// ReceiptOutcome is what a receipt leads to at the source.
type ReceiptOutcome int

const (
	// ReceiptRecord: write the run, then RecordReceipt in the key and
	// its follow-up (AfterReceipt).
	ReceiptRecord ReceiptOutcome = iota
	// ReceiptRetry: write the run, then Retry (a fresh run or give up).
	ReceiptRetry
	// ReceiptIgnore: a late receipt that does not complete the run,
	// which already ended FAILED: nothing to write.
	ReceiptIgnore
)

// OnReceipt takes a Fresh receipt (Match) for a source run: the run ended
// by it, and what follows.
func OnReceipt(run *Run, env *messages.Envelope, now time.Time) (*Run, ReceiptOutcome, *Refusal) {
	m := &env.Message
	if !bytes.Equal(m.Receipt.MaterialDigest, run.MaterialDigest) {
		return nil, 0, Refuse(ReasonStateMismatch, "receipt answers another material")
	}
	late := LateReceiptPossible(run)
	next := *run
	next.Reason, next.TimedOut = "", false
	next.ReceiptDigest, next.ReceiptMsgID = env.Digest, m.MsgID
	next.UpdatedAt = now
	next.CompletedAt = &now
	next.LastSent, next.LastSentSubject, next.LastSentMsgID = nil, "", ""
	switch {
	case m.Receipt.Status == messages.StatusAgreementKeyLost:
		next.State, next.Reason = Failed, ReasonAgreementKeyLost
	case m.Receipt.Status != messages.StatusOK:
		next.State, next.Reason = Failed, "destination reported "+m.Receipt.Status
	case !hmac.Equal(m.Receipt.KeyConfirmation, run.ExpectedKC):
		next.State, next.Reason = Failed, "key confirmation mismatch"
	default:
		next.State = Completed
	}
	switch {
	case late && next.State != Completed:
		return &next, ReceiptIgnore, nil
	case Retryable(&next):
		return &next, ReceiptRetry, nil
	}
	return &next, ReceiptRecord, nil
}

// Retryable reports whether a source run ended FAILED in a way a fresh run
// may cure: timed out, or its destination lost its agreement key. Such a
// run is followed by Retry, not by recording the failure.
func Retryable(run *Run) bool {
	return run.State == Failed && (run.TimedOut || run.Reason == ReasonAgreementKeyLost)
}

// RecordReceipt writes an ended source run's outcome into the primary's
// key record: the watermark and the replica's state, and activates the
// staged version if this was the last confirmation it waited for. It
// reports the version activated (or 0) and whether k changed; it may be
// repeated (a redelivered receipt, the sweeper after a crash).
func RecordReceipt(k *Key, run *Run, now time.Time) (activated uint32, changed bool) {
	r, ok := k.Replica(run.Peer)
	if !ok {
		return 0, false // the replica was deleted meanwhile
	}
	if run.State == Completed {
		if k.Holds(run.Peer, run.Version) {
			// Recorded already (by this run, redelivered, or a later
			// one), with the replica's state and any activation in the
			// same write: nothing to write again.
			return 0, false
		}
		first := !k.HoldsAny(run.Peer)
		k.MarkHeld(run.Peer, run.Version)
		// A sync it could not apply for lack of this version may be sent
		// again now, without waiting for the resend timer.
		delete(k.SyncSent, run.Peer)
		if first && run.WasCurrent && run.Epoch == 1 {
			// The run that created the replica gave it the state of epoch
			// 1 (the creating primary, version 1, the description): no
			// sync needed. A key that changed before it had this replica
			// is synced (NeedsSync).
			r.SyncedEpoch = max(r.SyncedEpoch, run.Epoch)
		}
		r.State = k.ReplicaState(run.Peer, r.State)
		r.Reason = ""
		activated = k.TryActivate(now)
	} else {
		if r.ReplicationID != run.ID || k.Holds(run.Peer, run.Version) {
			return 0, false
		}
		r.State, r.Reason = ReplicaFailed, run.Reason
	}
	r.ReplicationID = run.ID
	r.UpdatedAt = now
	k.SetReplica(r)
	k.UpdatedAt = now
	return activated, true
}

// AfterReceipt is what a recorded receipt leads to: sync the replicas (a
// version became current, or one has not confirmed the epoch), and copy
// the next version the run's replica lacks.
func AfterReceipt(k *Key, run *Run, activated uint32) (sync, next bool) {
	sync = activated != 0 || slices.ContainsFunc(k.Replicas, k.NeedsSync)
	next = run.State == Completed && len(k.Missing(run.Peer)) > 0
	return sync, next
}
