package messages

// API SKELETON — bodies to be implemented (this file is replaced).

import (
	"crypto"
	"errors"
	"time"
)

var errTODO = errors.New("messages: not implemented")

// Subjects (NATS). Region names are lowercase letters, digits and '-'.

// OutboxSubject is where region src's worker publishes a message for dst:
// mrk.<src>.out.<dst>.<type>.
func OutboxSubject(src, dst string, t Type) string {
	return "mrk." + src + ".out." + dst + "." + string(t)
}

// InboxSubject is where the proxy delivers a message from src to dst:
// mrk.<dst>.in.<src>.<type>.
func InboxSubject(dst, src string, t Type) string {
	return "mrk." + dst + ".in." + src + "." + string(t)
}

// KID returns the key id of an RSK public key: SHA-256 of its SubjectPublicKeyInfo DER.
func KID(pub crypto.PublicKey) ([]byte, error) { return nil, errTODO }

// Digest returns SHA-384 of an envelope's exact bytes.
func Digest(raw []byte) []byte { return nil }

// Seal checks m (v, type, body matching type, ids, regions, times) and returns
// the signed COSE_Sign1 envelope. signer must hold an ECDSA P-384 key; the kid
// is computed from signer.Public(). The signature is normalised to low-S.
func Seal(m *Message, signer crypto.Signer) ([]byte, error) { return nil, errTODO }

// Parse decodes an envelope strictly without checking its signature or
// any bundle (for inspect and for fuzzing). Errors are *VerifyError with
// ReasonMalformed / ReasonNonCanonical / ReasonBadAlgorithm / ReasonTooLarge.
func Parse(raw []byte) (*Envelope, error) { return nil, errTODO }

// VerifyOptions says what a receiver expects.
type VerifyOptions struct {
	Bundle   *Bundle       // required
	Now      time.Time     // required
	Skew     time.Duration // allowed clock skew; 0 means DefaultSkew
	Receiver string        // if set, dst must equal it (a worker sets its region; the proxy leaves it empty)
	Subject  string        // if set, must be the outbox or inbox subject for this message
}

// DefaultSkew is the clock skew allowance used when VerifyOptions.Skew is 0.
const DefaultSkew = 30 * time.Second

// Verify parses raw strictly and applies every stateless check of the protocol.
func Verify(raw []byte, opts VerifyOptions) (*Envelope, error) { return nil, errTODO }

// Reason is a machine-readable cause of refusal, used in metrics labels and
// dead-letter headers.
type Reason string

const (
	ReasonTooLarge       Reason = "too_large"
	ReasonMalformed      Reason = "malformed"
	ReasonNonCanonical   Reason = "non_canonical"
	ReasonBadAlgorithm   Reason = "bad_algorithm"
	ReasonUnknownKID     Reason = "unknown_kid"
	ReasonKIDWrongRegion Reason = "kid_wrong_region"
	ReasonKIDNotValid    Reason = "kid_not_valid"
	ReasonBadSignature   Reason = "bad_signature"
	ReasonBadVersion     Reason = "bad_version"
	ReasonWrongPartition Reason = "wrong_partition"
	ReasonUnknownRegion  Reason = "unknown_region"
	ReasonWrongDst       Reason = "wrong_dst"
	ReasonReflected      Reason = "reflected"
	ReasonExpired        Reason = "expired"
	ReasonFromFuture     Reason = "from_future"
	ReasonSubject        Reason = "subject_mismatch"
)

// VerifyError is returned for every refused message.
type VerifyError struct {
	Reason Reason
	Detail string // human-readable, never contains secret material
}

func (e *VerifyError) Error() string { return "message refused: " + string(e.Reason) + ": " + e.Detail }

// ErrBadSignature is matched by errors.Is for a VerifyError whose Reason is ReasonBadSignature.
var ErrBadSignature = errors.New("bad signature")

// Bundle is a partition's trust bundle.
type Bundle struct{}

// BundleKey is one RSK entry.
type BundleKey struct {
	Region    string
	KID       []byte
	PublicKey crypto.PublicKey // *ecdsa.PublicKey, P-384
	NotBefore time.Time
	NotAfter  time.Time
}

// NewBundle builds a bundle in memory (tests, demo).
func NewBundle(partition string, regions []string, keys []BundleKey) (*Bundle, error) {
	return nil, errTODO
}

// ParseBundle parses the JSON form. LoadBundle reads it from a file.
func ParseBundle(data []byte) (*Bundle, error)     { return nil, errTODO }
func LoadBundle(path string) (*Bundle, error)      { return nil, errTODO }
func (b *Bundle) MarshalJSON() ([]byte, error)     { return nil, errTODO }
func (b *Bundle) Partition() string                { return "" }
func (b *Bundle) Regions() []string                { return nil }
func (b *Bundle) HasRegion(r string) bool          { return false }
func (b *Bundle) Key(kid []byte) (BundleKey, bool) { return BundleKey{}, false }

// NewID returns 32 lowercase hex digits from crypto/rand, for msg_id and replication_id.
func NewID() string { return "" }

// TranscriptDigest returns SHA-384 over a versioned label and the digests of
// init, offer and material, the value both HSMs MAC for key confirmation.
func TranscriptDigest(initDigest, offerDigest, materialDigest []byte) []byte { return nil }
