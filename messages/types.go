package messages

import "time"

// Version is the protocol version carried in every payload (field v).
const Version = 1

// MaxMessageSize bounds an encoded envelope. A material message, the largest,
// is about 700 bytes; anything bigger than this is refused before parsing.
const MaxMessageSize = 16 << 10

// Type names a protocol message.
type Type string

// The four messages of one replication, in order.
const (
	TypeInit     Type = "replication.init"     // A→B: what is about to be replicated
	TypeOffer    Type = "replication.offer"    // B→A: RAKB public key
	TypeMaterial Type = "replication.material" // A→B: RAKA public key and wrapped K
	TypeReceipt  Type = "replication.receipt"  // B→A: result and key confirmation
)

// Lifecycle messages (docs/LIFECYCLE.md). They have the same header and
// envelope; their replication_id names the exchange they belong to (a fresh
// id for each sync, the hand-over's id for a hand-over and its accept).
const (
	TypeSync     Type = "key.sync"         // primary (or old primary) → replica: the key's shared state
	TypeStatus   Type = "key.status"       // replica → sender of a sync, or → primary: the replica's state
	TypeHandover Type = "primary.handover" // old primary → new primary: take over the key
	TypeAccept   Type = "primary.accept"   // new primary → old primary: taken over
)

// Header holds the fields every message carries.
type Header struct {
	V             int    `cbor:"v"`
	Type          Type   `cbor:"type"`
	MsgID         string `cbor:"msg_id"`         // 32 lowercase hex digits, unique per message
	ReplicationID string `cbor:"replication_id"` // 32 lowercase hex digits, unique per replication run
	Partition     string `cbor:"partition"`
	Src           string `cbor:"src"`        // sending region
	Dst           string `cbor:"dst"`        // receiving region
	SentAt        int64  `cbor:"sent_at"`    // Unix milliseconds
	ExpiresAt     int64  `cbor:"expires_at"` // Unix milliseconds
}

// SentTime returns SentAt as a time.Time.
func (h *Header) SentTime() time.Time { return time.UnixMilli(h.SentAt) }

// ExpiryTime returns ExpiresAt as a time.Time.
func (h *Header) ExpiryTime() time.Time { return time.UnixMilli(h.ExpiresAt) }

// Init is the body of replication.init (A→B).
type Init struct {
	KeyID         string `cbor:"key_id"`   // "mrk-" + 32 lowercase hex digits
	KeySpec       string `cbor:"key_spec"` // "SYMMETRIC_DEFAULT"
	KeyUsage      string `cbor:"key_usage"`
	Version       uint32 `cbor:"version"` // material version, ≥ 1
	PrimaryRegion string `cbor:"primary_region"`
	// Policy is the key policy (JSON, docs/AUTHZ.md) the destination gives
	// the replica if it creates one; absent: the destination's default.
	// At most MaxPolicySize bytes of UTF-8.
	Policy string `cbor:"policy,omitempty" json:",omitempty"`
}

// Offer is the body of replication.offer (B→A).
type Offer struct {
	InitDigest []byte `cbor:"init_digest"` // SHA-384 of the init envelope
	RAKB       []byte `cbor:"rakb"`        // uncompressed SEC1 P-384 point (97 bytes)
}

// Properties are the key's shared properties, sent with the material.
type Properties struct {
	KeySpec     string `cbor:"key_spec"`
	KeyUsage    string `cbor:"key_usage"`
	Description string `cbor:"description"`
}

// Material is the body of replication.material (A→B).
type Material struct {
	OfferDigest []byte     `cbor:"offer_digest"` // SHA-384 of the offer envelope
	RAKA        []byte     `cbor:"raka"`         // uncompressed SEC1 P-384 point (97 bytes)
	WrappedKey  []byte     `cbor:"wrapped_key"`  // K under RWK, AES-256-KWP (RFC 5649)
	Properties  Properties `cbor:"properties"`
}

// Receipt status values. Anything but StatusOK is an error code.
const (
	StatusOK            = "ok"
	StatusUnwrapFailed  = "unwrap_failed"
	StatusKeyExists     = "key_exists"
	StatusInternalError = "internal_error"
)

// Receipt is the body of replication.receipt (B→A).
type Receipt struct {
	MaterialDigest  []byte `cbor:"material_digest"`  // SHA-384 of the material envelope
	Status          string `cbor:"status"`           // StatusOK or an error code
	KeyConfirmation []byte `cbor:"key_confirmation"` // AES-CMAC with K over the transcript; empty unless ok
}

// Sync is the body of key.sync: the key's shared state as the sender knows
// it. Epoch grows with every change of shared state (version activation,
// primary change) and carries over a primary change, so a replica applies a
// sync only if its epoch is newer than the one it holds.
type Sync struct {
	KeyID          string   `cbor:"key_id"`
	Epoch          uint64   `cbor:"epoch"`
	PrimaryRegion  string   `cbor:"primary_region"`
	CurrentVersion uint32   `cbor:"current_version"` // the version used to encrypt
	Versions       []uint32 `cbor:"versions"`        // every version, ascending, staged ones included
	Description    string   `cbor:"description"`
	AckStatusSeq   uint64   `cbor:"ack_status_seq"` // highest status_seq the sender has applied from the receiver
}

// Replica states reported in key.status.
const (
	ReplicaStateEnabled         = "ENABLED"
	ReplicaStatePendingDeletion = "PENDING_DELETION"
	ReplicaStateDeleted         = "DELETED"
)

// Status is the body of key.status: a replica's state. It answers every
// sync (so it also acknowledges one) and is sent unprompted when the
// replica's own state changes (deletion scheduled, cancelled, done);
// StatusSeq grows with each such change.
type Status struct {
	KeyID         string   `cbor:"key_id"`
	Epoch         uint64   `cbor:"epoch"` // the epoch the replica holds
	PrimaryRegion string   `cbor:"primary_region"`
	StatusSeq     uint64   `cbor:"status_seq"`
	State         string   `cbor:"state"`         // a ReplicaState* value
	Versions      []uint32 `cbor:"versions"`      // versions the replica holds, ascending
	DeletionDate  int64    `cbor:"deletion_date"` // Unix ms; 0 unless PENDING_DELETION
	// SyncDigest is the SHA-384 of the key.sync this status answers, or
	// empty for a status sent unprompted (which the primary acknowledges
	// with a sync; a status answering a sync is not answered).
	SyncDigest []byte `cbor:"sync_digest"`
}

// Handover is the body of primary.handover (old primary → new primary).
type Handover struct {
	KeyID          string   `cbor:"key_id"`
	Epoch          uint64   `cbor:"epoch"` // the epoch of the change
	CurrentVersion uint32   `cbor:"current_version"`
	Versions       []uint32 `cbor:"versions"` // all held by the new primary
	Replicas       []string `cbor:"replicas"` // the key's replicas after the change, the old primary included
	Description    string   `cbor:"description"`
}

// Accept is the body of primary.accept (new primary → old primary).
type Accept struct {
	HandoverDigest []byte `cbor:"handover_digest"` // SHA-384 of the handover envelope
	KeyID          string `cbor:"key_id"`
	Epoch          uint64 `cbor:"epoch"`
}

// Message is a decoded payload: the header and exactly one body, the one
// named by Type.
type Message struct {
	Header
	Init     *Init     `cbor:"init,omitempty"`
	Offer    *Offer    `cbor:"offer,omitempty"`
	Material *Material `cbor:"material,omitempty"`
	Receipt  *Receipt  `cbor:"receipt,omitempty"`
	Sync     *Sync     `cbor:"sync,omitempty"`
	Status   *Status   `cbor:"status,omitempty"`
	Handover *Handover `cbor:"handover,omitempty"`
	Accept   *Accept   `cbor:"accept,omitempty"`
}

// Envelope is a parsed (and, when returned by Verify, verified) message.
type Envelope struct {
	KID     []byte  // kid from the protected header (32 bytes)
	Message Message // the decoded payload
	Raw     []byte  // the exact envelope bytes
	Digest  []byte  // SHA-384 of Raw (48 bytes)
}
