package repl

import (
	"time"

	"github.com/mrkrepl/mrkrepl/messages"
)

// Config is what the core needs to know about its region.
type Config struct {
	Region    string // this region
	Partition string
	// MessageTTL is how long a message this region sends stays valid
	// (expires_at), and how long lifecycle messages wait before a resend.
	MessageTTL time.Duration
	// ReplicationTTL is a run's lifetime (its RAKB's, at a destination).
	ReplicationTTL time.Duration
	// RunTimeout is how long a source run may take before the sweeper
	// ends it FAILED (timed out).
	RunTimeout time.Duration
	// MaxAttempts bounds the runs tried for one replica and version.
	MaxAttempts int
}

// NewMessage fills the header of a message this region sends at now. The
// msg_id is left empty: the shell gives it one when it seals the message.
func (c Config) NewMessage(t messages.Type, runID, dst string, now time.Time) *messages.Message {
	return &messages.Message{Header: messages.Header{
		V:             messages.Version,
		Type:          t,
		ReplicationID: runID,
		Partition:     c.Partition,
		Src:           c.Region,
		Dst:           dst,
		SentAt:        now.UnixMilli(),
		ExpiresAt:     now.Add(c.MessageTTL).UnixMilli(),
	}}
}

// Sealed is a message as the shell signed it.
type Sealed struct {
	Raw    []byte // the COSE_Sign1 envelope
	Digest []byte // messages.Digest(Raw)
	KID    []byte // the kid of the RSK that signed it
}

// Record notes m, sealed as s, as the run's last message (the reply a
// redelivery is answered with) and, for init, offer and material, its
// digest (and the signer's kid) among the run's transcript.
func (r *Run) Record(m *messages.Message, s Sealed) {
	r.LastSent = s.Raw
	r.LastSentSubject = messages.OutboxSubject(m.Src, m.Dst, m.Type)
	r.LastSentMsgID = m.MsgID
	switch m.Type {
	case messages.TypeInit:
		r.InitDigest, r.SrcKID = s.Digest, s.KID
	case messages.TypeOffer:
		r.OfferDigest, r.DstKID = s.Digest, s.KID
	case messages.TypeMaterial:
		r.MaterialDigest = s.Digest
	}
}

// KDF is the context both sides bind the wrapping key to (hsmsvc.KDFContext
// in the shell): every field of it comes from the run and its messages.
type KDF struct {
	Partition     string
	SrcRegion     string
	DstRegion     string
	SrcKID        []byte
	DstKID        []byte
	RAKA          []byte // destination only (the source makes it)
	RAKB          []byte
	ReplicationID string
	KeyID         string
	Version       uint32
	InitDigest    []byte
	OfferDigest   []byte
}

// KeyRef names one version of a key in the HSM.
type KeyRef struct {
	KeyID   string
	Version uint32
}
