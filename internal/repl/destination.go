package repl

import (
	"bytes"
	"slices"
	"time"

	"github.com/mrkrepl/mrkrepl/messages"
)

// The destination role of a run: an init makes an agreement key (RAKB)
// and is answered with an offer; the material is unwrapped into the HSM
// and answered with a receipt (the diagram is in source.go).

// CreateRAKB asks the shell to create the run's agreement key, to expire
// with the run. If one exists already, it was made by a handler that ended
// before any offer was stored or sent: the shell replaces it.
type CreateRAKB struct {
	RunID     string
	ExpiresAt time.Time
}

// OnInit takes an init: its run here (nil if none) and the key's record
// here (nil if absent). A Fresh init gives the new run (without its RAKB
// yet) and the agreement key to create; policy is the replica's policy
// the shell checked from the init (empty: the region's default).
func OnInit(run *Run, key *Key, env *messages.Envelope, policy string, cfg Config, now time.Time) (Verdict, *Run, CreateRAKB) {
	m := &env.Message
	in := m.Init
	if in.PrimaryRegion != m.Src {
		return refuseVerdict(Refuse(ReasonNotPrimary, "init from %s names primary %s", m.Src, in.PrimaryRegion)), nil, CreateRAKB{}
	}
	if r := CheckProperties("init", in.KeySpec, in.KeyUsage); r != nil {
		return refuseVerdict(r), nil, CreateRAKB{}
	}
	if v := Match(run, env); v.Kind != Fresh {
		return v, nil, CreateRAKB{}
	}
	// A replica that is already here is answered like a new one: the HSM
	// reports the key as present at unwrap time, and the key confirmation
	// in the receipt lets the source check that it is the same key (this is
	// how a source that lost a receipt, or retried, learns of the replica).
	if key != nil && !key.Deleted {
		if key.Role == Primary || key.PrimaryRegion != m.Src {
			return refuseVerdict(Refuse(ReasonKeyExists, "key %s exists in %s with primary %s", in.KeyID, cfg.Region, key.PrimaryRegion)), nil, CreateRAKB{}
		}
		if key.KeySpec != in.KeySpec || key.KeyUsage != in.KeyUsage {
			return refuseVerdict(Refuse(ReasonBadProperties, "init for key %s with key_spec %q, key_usage %q; the replica here is %q, %q", in.KeyID, in.KeySpec, in.KeyUsage, key.KeySpec, key.KeyUsage)), nil, CreateRAKB{}
		}
	}
	next := &Run{
		ID: m.ReplicationID, Role: Destination, KeyID: in.KeyID, Version: in.Version,
		Peer: m.Src, State: OfferSent, KeySpec: in.KeySpec, KeyUsage: in.KeyUsage,
		PrimaryRegion: in.PrimaryRegion, SrcKID: env.KID, InitDigest: env.Digest, InitMsgID: m.MsgID,
		CreatedAt: m.SentTime(), UpdatedAt: now, ExpiresAt: now.Add(cfg.ReplicationTTL),
		Policy: policy,
	}
	return Verdict{Kind: Fresh}, next, CreateRAKB{RunID: next.ID, ExpiresAt: next.ExpiresAt}
}

// AfterRAKB records the agreement key's public half in the run and returns
// the offer to seal (Run.Record) and send.
func AfterRAKB(run *Run, rakb []byte, cfg Config, now time.Time) *messages.Message {
	run.RAKB = rakb
	reply := cfg.NewMessage(messages.TypeOffer, run.ID, run.Peer, now)
	reply.Offer = &messages.Offer{InitDigest: run.InitDigest, RAKB: rakb}
	return reply
}

// Unwrap asks the shell to unwrap K into the HSM under Ref with the run's
// RAKB.
type Unwrap struct {
	Ref     KeyRef
	PeerKey []byte // RAKA
	Wrapped []byte
	KDF     KDF
}

// OnMaterial takes a Fresh material (Match) for a destination run: the
// unwrap to ask of the HSM, or a refusal.
func OnMaterial(run *Run, env *messages.Envelope, cfg Config) (Unwrap, *Refusal) {
	mat := env.Message.Material
	if !bytes.Equal(mat.OfferDigest, run.OfferDigest) {
		return Unwrap{}, Refuse(ReasonStateMismatch, "material answers another offer")
	}
	if p := mat.Properties; p.KeySpec != run.KeySpec || p.KeyUsage != run.KeyUsage {
		return Unwrap{}, Refuse(ReasonBadProperties, "material with key_spec %q, key_usage %q; the init said %q, %q", p.KeySpec, p.KeyUsage, run.KeySpec, run.KeyUsage)
	}
	return Unwrap{
		Ref:     KeyRef{KeyID: run.KeyID, Version: run.Version},
		PeerKey: mat.RAKA,
		Wrapped: mat.WrappedKey,
		KDF: KDF{
			Partition: cfg.Partition, SrcRegion: run.Peer, DstRegion: cfg.Region,
			SrcKID: run.SrcKID, DstKID: run.DstKID, RAKA: mat.RAKA, RAKB: run.RAKB,
			ReplicationID: run.ID, KeyID: run.KeyID, Version: run.Version,
			InitDigest: run.InitDigest, OfferDigest: run.OfferDigest,
		},
	}, nil
}

// UnwrapResult is what became of an unwrap, as the shell classifies the
// HSM's answer. An HSM failure of its own (a token or disk error) is not a
// result: the RAKB or K is still there, and the message is retried.
type UnwrapResult int

const (
	Unwrapped UnwrapResult = iota
	// UnwrapKeyExists: another key under the ref; the key confirmation
	// tells the source whether it is the right one.
	UnwrapKeyExists
	// UnwrapRAKBGoneKeyHeld: the RAKB is gone and K is here (consumed by
	// an unwrap whose run write was lost); the key confirmation proves it.
	UnwrapRAKBGoneKeyHeld
	// UnwrapRAKBGone: the RAKB is gone (expired, destroyed, lost) and K is
	// not here: the source starts a fresh run.
	UnwrapRAKBGone
	// UnwrapFailed: the wrapped key or RAKA did not verify.
	UnwrapFailed
)

var unwrapNames = map[string]UnwrapResult{
	"ok": Unwrapped, "exists": UnwrapKeyExists, "rakb-gone-key-held": UnwrapRAKBGoneKeyHeld,
	"rakb-gone": UnwrapRAKBGone, "fails": UnwrapFailed,
}

// AfterUnwrap is the run after the unwrap of the material in env, and the
// receipt to send. If keyHeld, K is in the HSM: the shell asks for the key
// confirmation over next.Transcript() into the receipt, stores the replica
// (StoreReplica) and sets next.NewReplica, then seals, writes and sends.
func AfterUnwrap(run *Run, env *messages.Envelope, res UnwrapResult, cfg Config, now time.Time) (next *Run, receipt *messages.Message, keyHeld bool) {
	status := messages.StatusOK
	switch res {
	case UnwrapRAKBGone:
		status = messages.StatusAgreementKeyLost
	case UnwrapFailed:
		status = messages.StatusUnwrapFailed
	}
	n := *run
	n.MaterialDigest, n.MaterialMsgID = env.Digest, env.Message.MsgID
	n.UpdatedAt = now
	reply := cfg.NewMessage(messages.TypeReceipt, run.ID, run.Peer, now)
	reply.Receipt = &messages.Receipt{MaterialDigest: env.Digest, Status: status}
	if status != messages.StatusOK {
		n.State, n.Reason = Failed, status
		return &n, reply, false
	}
	n.State = Completed
	n.UsableAt = &n.UpdatedAt
	n.CompletedAt = &n.UpdatedAt
	return &n, reply, true
}

// NewReplicaKey is the record of a replica that run creates (old: the
// tombstone it replaces, or nil). The run that creates the replica makes
// its version the current one (the primary sends the current version
// first).
func NewReplicaKey(run *Run, props messages.Properties, old *Key, cfg Config, now time.Time) *Key {
	k := &Key{
		KeyID: run.KeyID, Partition: cfg.Partition, Region: cfg.Region,
		Role: ReplicaRole, PrimaryRegion: run.PrimaryRegion, KeySpec: props.KeySpec,
		KeyUsage: props.KeyUsage, Description: props.Description, Enabled: true,
		Versions: []uint32{run.Version}, CurrentVersion: run.Version,
		CreatedAt: now, UpdatedAt: now, ReplicatedFrom: run.ID, UsableAt: &now,
		// The run brings the state of epoch 1 (the init carries no
		// epoch); if the key changed before this replica existed, the
		// primary syncs it at once (RecordReceipt, NeedsSync).
		KeyState: KeyEnabled, Epoch: 1, Policy: run.Policy,
	}
	k.NoteReceived(run.Version, true, now)
	if old != nil {
		// Re-created after a deletion: keep numbering status reports
		// where the deleted replica stopped.
		k.StatusSeq, k.StatusAcked = old.StatusSeq, old.StatusAcked
	}
	return k
}

// StoreReplica is the compare-and-set of a run's version into an existing
// replica record k: a tombstone is replaced by a new replica (created); a
// version that arrives later is only added (the primary's key.sync says
// when it becomes current). It reports whether k changed.
func StoreReplica(k *Key, run *Run, props messages.Properties, cfg Config, now time.Time) (created, changed bool) {
	if k.Deleted {
		*k = *NewReplicaKey(run, props, k, cfg, now)
		return true, true
	}
	if slices.Contains(k.Versions, run.Version) {
		return false, false
	}
	k.Versions = AddVersion(k.Versions, run.Version)
	k.NoteReceived(run.Version, false, now)
	k.UpdatedAt = now
	return false, true
}
