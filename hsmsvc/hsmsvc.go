// Package hsmsvc is the HSM service of a region: everything mrkrepl asks of
// a hardware security module, behind one interface with interchangeable
// backends.
//
// A backend is chosen by URI with [Open]:
//
//	soft:                          in-memory software HSM (tests, demo)
//	soft:/var/lib/mrkrepl/hsm      software HSM persisted in a directory,
//	                               every object sealed with AES-256-GCM under
//	                               a master key (master-key-file=…, created on
//	                               first use if absent)
//	pkcs11:token=…;module-path=…   a PKCS#11 token (RFC 7512), see pkcs11.go
//
// Key material never crosses this interface: callers name keys with a
// [KeyRef] and receive only public keys, wrapped blobs, ciphertexts and MACs.
// The replication steps (ECDH on P-384, the SP 800-56C one-step KDF with
// SHA-384, AES-256 key wrap with padding, AES-CMAC key confirmation) are
// specified in docs/PROTOCOL.md; [KDFContext.FixedInfo] is the binding of the
// run into the derived key.
//
// Implementations are safe for concurrent use.
package hsmsvc

import (
	"context"
	"crypto"
	"errors"
	"log/slog"
	"time"
)

// KeyRef names one version of a multi-Region key's material inside an HSM.
type KeyRef struct {
	KeyID   string // "mrk-" + 32 lowercase hex digits
	Version uint32 // ≥ 1
}

// Errors callers branch on.
var (
	ErrNotFound = errors.New("hsm object not found")
	ErrExists   = errors.New("hsm object already exists")
)

// Signer gives the region's active Replication Signing Key (ECDSA P-384).
type Signer interface {
	Signer() crypto.Signer
}

// KeyStore creates and destroys multi-Region key material.
type KeyStore interface {
	// GenerateKey creates a fresh AES-256 key for ref. ErrExists if present.
	GenerateKey(ctx context.Context, ref KeyRef) error
	// HasKey reports whether ref is present.
	HasKey(ctx context.Context, ref KeyRef) (bool, error)
	// DestroyKey removes ref. ErrNotFound if absent.
	DestroyKey(ctx context.Context, ref KeyRef) error
}

// Cipher encrypts and decrypts with a multi-Region key (AES-256-GCM).
type Cipher interface {
	// Encrypt returns nonce ‖ ciphertext ‖ tag.
	Encrypt(ctx context.Context, ref KeyRef, plaintext, aad []byte) ([]byte, error)
	Decrypt(ctx context.Context, ref KeyRef, ciphertext, aad []byte) ([]byte, error)
}

// Replicator runs the HSM side of the replication protocol.
type Replicator interface {
	// CreateAgreementKey makes the destination's ephemeral ECDH P-384 key
	// (RAKB) for one replication and returns its public key as an
	// uncompressed SEC1 point. The key is kept until UnwrapFromPeer consumes
	// it, DestroyAgreementKey removes it, or expiresAt passes.
	CreateAgreementKey(ctx context.Context, replicationID string, expiresAt time.Time) ([]byte, error)
	// WrapForPeer runs the source's step: make RAKA, validate
	// req.PeerPublicKey (RAKB), derive Z and the RWK with
	// req.Context (its RAKA field is filled in by the backend), wrap the key
	// named by req.Context.KeyID/Version, destroy RAKA and the RWK.
	WrapForPeer(ctx context.Context, req WrapRequest) (*WrapResult, error)
	// UnwrapFromPeer runs the destination's step: with the RAKB of
	// req.Context.ReplicationID and req.PeerPublicKey (RAKA), derive the RWK,
	// unwrap req.Wrapped and store it as req.Context.KeyID/Version, then
	// destroy the RAKB: K is stored before the RAKB goes, so a crash in
	// between leaves both, and the same call again succeeds. A key already
	// stored with the same material is success, with other material
	// ErrExists. No RAKB (consumed, destroyed or expired) is ErrNotFound,
	// whether or not K is stored. The RAKB also goes when the input does not
	// unwrap (ErrUnwrapFailed) and on ErrExists: it serves one replication.
	UnwrapFromPeer(ctx context.Context, req UnwrapRequest) error
	// KeyConfirmation returns AES-CMAC (16 bytes) with the key over
	// KeyConfirmationLabel ‖ transcript.
	KeyConfirmation(ctx context.Context, ref KeyRef, transcript []byte) ([]byte, error)
	// DestroyAgreementKey removes a RAKB. ErrNotFound if absent.
	DestroyAgreementKey(ctx context.Context, replicationID string) error
}

// HSM is everything a region's worker needs from its HSM.
type HSM interface {
	Signer
	KeyStore
	Cipher
	Replicator
	// Backend names the backend ("soft", "pkcs11") for logs and metrics.
	Backend() string
	Close() error
}

// WrapRequest is the input of Replicator.WrapForPeer.
type WrapRequest struct {
	PeerPublicKey []byte // RAKB, uncompressed SEC1 P-384
	Context       KDFContext
}

// WrapResult is the output of Replicator.WrapForPeer.
type WrapResult struct {
	RAKA    []byte // uncompressed SEC1 P-384
	Wrapped []byte // AES-256-KWP(RWK, K)
}

// UnwrapRequest is the input of Replicator.UnwrapFromPeer.
type UnwrapRequest struct {
	PeerPublicKey []byte // RAKA, uncompressed SEC1 P-384
	Wrapped       []byte
	Context       KDFContext
}

// KDFContext is every value the RWK is bound to (FixedInfo of SP 800-56C).
// Src is the region that holds the key (A), Dst the one receiving it (B).
type KDFContext struct {
	Partition     string
	SrcRegion     string
	DstRegion     string
	SrcKID        []byte // A's RSK kid (the one that signed init/material)
	DstKID        []byte // B's RSK kid (the one that signed offer)
	RAKA          []byte
	RAKB          []byte
	ReplicationID string
	KeyID         string
	Version       uint32
	InitDigest    []byte
	OfferDigest   []byte
}

// Ref returns the key the context names.
func (c *KDFContext) Ref() KeyRef { return KeyRef{KeyID: c.KeyID, Version: c.Version} }

// Options are shared by every backend; each ignores what it does not use.
type Options struct {
	// AllowHostKDF permits a PKCS#11 token that cannot run the protocol's
	// KDF inside the token (SoftHSM2) to release the ECDH shared secret Z to
	// the host for the KDF. Without it such a token is refused at Open.
	AllowHostKDF bool
	// PIN overrides the URI's pin-value/pin-source (tests).
	PIN string
	// Logger receives the backend's logs; nil discards them.
	Logger *slog.Logger
}
