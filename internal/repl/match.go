package repl

import (
	"bytes"

	"github.com/mrkrepl/mrkrepl/messages"
)

// VerdictKind is what Match makes of a run's message.
type VerdictKind int

const (
	// Fresh: the message is the next one the run waits for; the
	// transition function of its type decides what follows.
	Fresh VerdictKind = iota
	// Redelivery: the run consumed these exact bytes already; the shell
	// answers with the reply the run stored (Run.LastSent), or, for a
	// receipt, repeats the run's follow-up. Nothing else changes.
	Redelivery
	// Refused: the message does not fit the run (Verdict.Refusal says why)
	// and is never acted on.
	Refused
)

func (k VerdictKind) String() string {
	switch k {
	case Fresh:
		return "fresh"
	case Redelivery:
		return "redelivery"
	}
	return "refuse"
}

// Verdict is Match's answer.
type Verdict struct {
	Kind    VerdictKind
	Refusal *Refusal // Refused only
}

func refuseVerdict(r *Refusal) Verdict { return Verdict{Kind: Refused, Refusal: r} }

// Match is the one replay and duplicate rule for the four messages of a
// run (init, offer, material, receipt), verified and addressed to this
// region: run is the run's record here (nil if there is none).
//
//   - A message of the type the run's state waits for, from the run's peer
//     and in the run's role, is Fresh (an init is Fresh when there is no
//     run yet).
//   - The exact bytes the run already consumed for this type (same digest)
//     are a Redelivery.
//   - The msg_id of a message the run consumed, with other bytes, is
//     refused as replayed_msg_id; anything else that does not fit is
//     refused as state_mismatch, wrong_peer or unknown_replication.
//
// A receipt may still be Fresh after the sweeper ended the run FAILED
// (timed out, material sent): it proves by key confirmation whether the
// replica exists (OnReceipt).
func Match(run *Run, env *messages.Envelope) Verdict {
	m := &env.Message
	if m.Type == messages.TypeInit {
		if run == nil {
			return Verdict{Kind: Fresh}
		}
		if run.Role == Destination && bytes.Equal(run.InitDigest, env.Digest) {
			return Verdict{Kind: Redelivery}
		}
		return seen(m, env.Digest, run.InitMsgID, run.InitDigest,
			Refuse(ReasonStateMismatch, "replication %s already exists with another init", m.ReplicationID))
	}
	if run == nil {
		return refuseVerdict(Refuse(ReasonUnknownRun, "no replication %s here", m.ReplicationID))
	}
	role, waits, consumedID, consumed := Source, InitSent, run.OfferMsgID, run.OfferDigest
	switch m.Type {
	case messages.TypeMaterial:
		role, waits, consumedID, consumed = Destination, OfferSent, run.MaterialMsgID, run.MaterialDigest
	case messages.TypeReceipt:
		role, waits, consumedID, consumed = Source, MaterialSent, run.ReceiptMsgID, run.ReceiptDigest
	case messages.TypeOffer:
	default:
		return refuseVerdict(Refuse(string(messages.ReasonMalformed), "%s is not a message of a run", m.Type))
	}
	if run.Role != role {
		return refuseVerdict(Refuse(ReasonStateMismatch, "%s for a run where this region is %s", m.Type, run.Role))
	}
	if run.Peer != m.Src {
		return refuseVerdict(Refuse(ReasonWrongPeer, "%s from %s for a run with %s", m.Type, m.Src, run.Peer))
	}
	if run.State == waits || m.Type == messages.TypeReceipt && LateReceiptPossible(run) {
		return Verdict{Kind: Fresh}
	}
	if bytes.Equal(consumed, env.Digest) {
		return Verdict{Kind: Redelivery}
	}
	return seen(m, env.Digest, consumedID, consumed,
		Refuse(ReasonStateMismatch, "%s for replication %s in state %s", typeWord(m.Type), run.ID, run.State))
}

// LateReceiptPossible reports whether a source run that the sweeper ended
// still takes a receipt: it timed out after sending the material.
func LateReceiptPossible(run *Run) bool {
	return run.State == Failed && run.TimedOut && len(run.MaterialDigest) > 0
}

// seen is the replay check of a run's message that does not fit the run's
// state: when the run accepted a message of this type with the same msg_id
// (seenID) and other bytes (seenDigest), it is a replayed msg_id;
// otherwise it is refused with mismatch.
func seen(m *messages.Message, digest []byte, seenID string, seenDigest []byte, mismatch *Refusal) Verdict {
	if seenID != "" && seenID == m.MsgID && !bytes.Equal(seenDigest, digest) {
		return refuseVerdict(Refuse(ReasonReplayedMsgID, "msg_id %s seen before in replication %s with other content", m.MsgID, m.ReplicationID))
	}
	return refuseVerdict(mismatch)
}

func typeWord(t messages.Type) string {
	switch t {
	case messages.TypeOffer:
		return "offer"
	case messages.TypeMaterial:
		return "material"
	case messages.TypeReceipt:
		return "receipt"
	}
	return string(t)
}
