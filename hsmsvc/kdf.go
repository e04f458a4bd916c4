package hsmsvc

// The protocol crypto shared by every backend: FixedInfo, the one-step KDF,
// public key validation, AES key wrap with padding and AES-CMAC. A backend
// that can run a step inside its token (PKCS#11 C_WrapKey with
// CKM_AES_KEY_WRAP_PAD, CKM_AES_CMAC) does so; these functions are then the
// reference it must agree with (see kdf_test.go and testdata/).
//
// docs/CRYPTO.md describes the construction and the test vectors.

import (
	"bytes"
	"crypto/ecdh"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"github.com/tink-crypto/tink-go/v2/kwp/subtle"
	macsubtle "github.com/tink-crypto/tink-go/v2/mac/subtle"
)

// KeyConfirmationLabel prefixes the transcript in the key confirmation MAC.
const KeyConfirmationLabel = "mrkrepl/1 key-confirmation"

// KDFAlgorithmID is the first FixedInfo field.
const KDFAlgorithmID = "mrkrepl/1 RWK ECDH-P384 SSKDF-SHA384 AES-256-KWP"

// Sizes fixed by mrkrepl/1.
const (
	// PublicKeySize is the length of an uncompressed SEC1 P-384 point
	// (0x04 ‖ X ‖ Y), the only encoding of RAKA and RAKB.
	PublicKeySize = 1 + 2*48
	// KIDSize is the length of an RSK key id (SHA-256).
	KIDSize = 32
	// DigestSize is the length of a message digest and of the transcript
	// digest (SHA-384).
	DigestSize = 48
	// TranscriptSize is the length KeyConfirmation requires of its
	// transcript: a messages.TranscriptDigest.
	TranscriptSize = DigestSize
	// KeyConfirmationSize is the length of a key confirmation value
	// (a full AES-CMAC tag).
	KeyConfirmationSize = 16
	// KeySize is the length of multi-Region key material (AES-256).
	KeySize = 32

	sharedSecretSize = 48 // Z: the x-coordinate of a P-384 point
	rwkSize          = 32 // AES-256
)

// Errors callers may branch on, beside ErrNotFound and ErrExists.
var (
	// ErrInvalidPeerKey: a peer's public key is not a valid uncompressed
	// P-384 point (SP 800-56A rev3 §5.6.2.3.3 full public key validation).
	ErrInvalidPeerKey = errors.New("invalid peer public key")
	// ErrUnwrapFailed: a wrapped key did not authenticate under the RWK
	// derived from this context, that is, it was tampered with or the two
	// sides disagree on some FixedInfo field.
	ErrUnwrapFailed = errors.New("wrapped key did not authenticate")
	// ErrDecryptFailed: a ciphertext did not authenticate (wrong key,
	// wrong aad, tampered or truncated).
	ErrDecryptFailed = errors.New("ciphertext did not authenticate")
)

// Validate reports whether r names a key: KeyID is "mrk-" followed by 32
// lowercase hex digits and Version is at least 1.
func (r KeyRef) Validate() error {
	if !isKeyID(r.KeyID) {
		return fmt.Errorf("invalid key ref: key id %q is not \"mrk-\" and 32 lowercase hex digits", r.KeyID)
	}
	if r.Version == 0 {
		return fmt.Errorf("invalid key ref %s: version must be at least 1", r.KeyID)
	}
	return nil
}

// String returns "mrk-…/v<version>", for logs and errors.
func (r KeyRef) String() string { return fmt.Sprintf("%s/v%d", r.KeyID, r.Version) }

func isKeyID(s string) bool {
	return len(s) == 4+32 && s[:4] == "mrk-" && isLowerHex(s[4:])
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// checkReplicationID accepts 32 lowercase hex digits (messages.NewID).
func checkReplicationID(id string) error {
	if len(id) != 32 || !isLowerHex(id) {
		return fmt.Errorf("invalid replication id %q: want 32 lowercase hex digits", id)
	}
	return nil
}

// Validate reports whether c is complete and well formed: every field
// present, both regions named and different, kids of KIDSize bytes,
// digests of DigestSize bytes, RAKA and RAKB valid uncompressed P-384
// points (errors.Is ErrInvalidPeerKey otherwise), replication id and key
// ref well formed. Backends call it before any other step; FixedInfo
// refuses a context it rejects.
func (c *KDFContext) Validate() error { return c.validate(true) }

// validate is Validate, with the RAKA check skipped when needRAKA is false
// (WrapForPeer validates before it has made RAKA).
func (c *KDFContext) validate(needRAKA bool) error {
	if c == nil {
		return errors.New("invalid kdf context: nil")
	}
	switch {
	case c.Partition == "":
		return errors.New("invalid kdf context: empty partition")
	case c.SrcRegion == "":
		return errors.New("invalid kdf context: empty source region")
	case c.DstRegion == "":
		return errors.New("invalid kdf context: empty destination region")
	case c.SrcRegion == c.DstRegion:
		return fmt.Errorf("invalid kdf context: source and destination are both region %q", c.SrcRegion)
	case len(c.SrcKID) != KIDSize:
		return fmt.Errorf("invalid kdf context: source kid is %d bytes, want %d", len(c.SrcKID), KIDSize)
	case len(c.DstKID) != KIDSize:
		return fmt.Errorf("invalid kdf context: destination kid is %d bytes, want %d", len(c.DstKID), KIDSize)
	case len(c.InitDigest) != DigestSize:
		return fmt.Errorf("invalid kdf context: init digest is %d bytes, want %d", len(c.InitDigest), DigestSize)
	case len(c.OfferDigest) != DigestSize:
		return fmt.Errorf("invalid kdf context: offer digest is %d bytes, want %d", len(c.OfferDigest), DigestSize)
	}
	if err := checkReplicationID(c.ReplicationID); err != nil {
		return fmt.Errorf("invalid kdf context: %w", err)
	}
	if err := c.Ref().Validate(); err != nil {
		return fmt.Errorf("invalid kdf context: %w", err)
	}
	if needRAKA {
		if _, err := parseP384Public(c.RAKA); err != nil {
			return fmt.Errorf("invalid kdf context: RAKA: %w", err)
		}
	}
	if _, err := parseP384Public(c.RAKB); err != nil {
		return fmt.Errorf("invalid kdf context: RAKB: %w", err)
	}
	return nil
}

// FixedInfo encodes c for the one-step KDF: KDFAlgorithmID, then every field
// in declaration order, each prefixed with its length as a 4-byte big-endian
// integer (Version as 4 bytes big-endian).
//
// FixedInfo returns nil if c does not pass Validate: an incomplete context
// must never bind a key.
func (c *KDFContext) FixedInfo() []byte {
	if c.Validate() != nil {
		return nil
	}
	return c.appendFixedInfo(nil)
}

// appendFixedInfo encodes c without validating it.
func (c *KDFContext) appendFixedInfo(b []byte) []byte {
	var version [4]byte
	binary.BigEndian.PutUint32(version[:], c.Version)
	fields := [...][]byte{
		[]byte(KDFAlgorithmID),
		[]byte(c.Partition),
		[]byte(c.SrcRegion),
		[]byte(c.DstRegion),
		c.SrcKID,
		c.DstKID,
		c.RAKA,
		c.RAKB,
		[]byte(c.ReplicationID),
		[]byte(c.KeyID),
		version[:],
		c.InitDigest,
		c.OfferDigest,
	}
	n := 0
	for _, f := range fields {
		n += 4 + len(f)
	}
	b = slices.Grow(b, n)
	for _, f := range fields {
		b = binary.BigEndian.AppendUint32(b, uint32(len(f)))
		b = append(b, f...)
	}
	return b
}

// deriveRWK is the one-step KDF of NIST SP 800-56C rev2 §4.1 with H =
// SHA-384 (PKCS#11 CKD_SHA384_KDF_SP800): RWK = SHA-384(counter=1 ‖ Z ‖
// fixedInfo)[0:32]. One hash block covers the 32 bytes of an AES-256 key, so
// the counter is always 0x00000001.
//
// z must be the 48-byte x-coordinate of the ECDH result and fixedInfo
// non-empty (KDFContext.FixedInfo); otherwise deriveRWK returns nil, which
// kwpWrap and kwpUnwrap refuse. The caller clears the result after use.
func deriveRWK(z, fixedInfo []byte) []byte {
	if len(z) != sharedSecretSize || len(fixedInfo) == 0 {
		return nil
	}
	h := sha512.New384()
	h.Write([]byte{0, 0, 0, 1})
	h.Write(z)
	h.Write(fixedInfo)
	var sum [sha512.Size384]byte
	h.Sum(sum[:0])
	rwk := bytes.Clone(sum[:rwkSize])
	clear(sum[:])
	return rwk
}

// parseP384Public parses a peer's ECDH public key with the full public key
// validation of NIST SP 800-56A rev3 §5.6.2.3.3: the encoding must be the
// 97-byte uncompressed SEC1 point (compressed, hybrid and the 1-byte point at
// infinity are refused), both coordinates in [0, p-1] and the point on the
// curve (crypto/ecdh checks both). P-384 has cofactor 1, so every point on
// the curve other than the identity has order n and the last step, nQ = O,
// holds. Errors match ErrInvalidPeerKey.
func parseP384Public(b []byte) (*ecdh.PublicKey, error) {
	switch {
	case len(b) == 0:
		return nil, fmt.Errorf("%w: empty", ErrInvalidPeerKey)
	case len(b) == 1 && b[0] == 0:
		return nil, fmt.Errorf("%w: point at infinity", ErrInvalidPeerKey)
	case b[0] == 2 || b[0] == 3:
		return nil, fmt.Errorf("%w: compressed point, want uncompressed", ErrInvalidPeerKey)
	case b[0] == 6 || b[0] == 7:
		return nil, fmt.Errorf("%w: hybrid point, want uncompressed", ErrInvalidPeerKey)
	case b[0] != 4:
		return nil, fmt.Errorf("%w: encoding starts with 0x%02x, want 0x04", ErrInvalidPeerKey, b[0])
	case len(b) != PublicKeySize:
		return nil, fmt.Errorf("%w: %d bytes, want %d", ErrInvalidPeerKey, len(b), PublicKeySize)
	}
	pub, err := ecdh.P384().NewPublicKey(b)
	if err != nil {
		// crypto/ecdh refuses coordinates ≥ p and points not on the curve.
		return nil, fmt.Errorf("%w: not a point on P-384", ErrInvalidPeerKey)
	}
	return pub, nil
}

// kwpWrap wraps k under rwk with AES-256 key wrap with padding (NIST SP
// 800-38F KWP, RFC 5649; PKCS#11 CKM_AES_KEY_WRAP_PAD with the default
// alternative IV A65959A6). k must be 16 to 8192 bytes.
func kwpWrap(rwk, k []byte) ([]byte, error) {
	if len(rwk) != rwkSize {
		return nil, fmt.Errorf("wrap key: wrapping key is %d bytes, want %d", len(rwk), rwkSize)
	}
	w, err := subtle.NewKWP(rwk)
	if err != nil {
		return nil, fmt.Errorf("wrap key: %v", err)
	}
	wrapped, err := w.Wrap(k)
	if err != nil {
		return nil, fmt.Errorf("wrap key: %v", err)
	}
	return wrapped, nil
}

// kwpUnwrap reverses kwpWrap, refusing as kwpWrap does keys shorter than 16
// bytes. Any failure but a bad wrapping key length is ErrUnwrapFailed; the
// caller clears the result after use.
func kwpUnwrap(rwk, wrapped []byte) ([]byte, error) {
	if len(rwk) != rwkSize {
		return nil, fmt.Errorf("unwrap key: wrapping key is %d bytes, want %d", len(rwk), rwkSize)
	}
	w, err := subtle.NewKWP(rwk)
	if err != nil {
		return nil, fmt.Errorf("unwrap key: %v", err)
	}
	k, err := w.Unwrap(wrapped)
	if err != nil {
		return nil, fmt.Errorf("%w (%v)", ErrUnwrapFailed, err)
	}
	if len(k) < subtle.MinWrapSize {
		// A valid KWP blob, but of a key shorter than kwpWrap accepts.
		clear(k)
		return nil, fmt.Errorf("%w (key shorter than %d bytes)", ErrUnwrapFailed, subtle.MinWrapSize)
	}
	return k, nil
}

// cmac returns the 16-byte AES-CMAC (NIST SP 800-38B, RFC 4493) of msg under
// an AES-256 key.
func cmac(key, msg []byte) ([]byte, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("cmac: key is %d bytes, want %d", len(key), KeySize)
	}
	m, err := macsubtle.NewAESCMAC(key, KeyConfirmationSize)
	if err != nil {
		return nil, fmt.Errorf("cmac: %v", err)
	}
	return m.ComputeMAC(msg)
}

// keyConfirmationMessage returns KeyConfirmationLabel ‖ transcript, the
// input of the key confirmation MAC. transcript must be a
// messages.TranscriptDigest (TranscriptSize bytes).
func keyConfirmationMessage(transcript []byte) ([]byte, error) {
	if len(transcript) != TranscriptSize {
		return nil, fmt.Errorf("key confirmation: transcript is %d bytes, want %d", len(transcript), TranscriptSize)
	}
	msg := make([]byte, 0, len(KeyConfirmationLabel)+len(transcript))
	msg = append(msg, KeyConfirmationLabel...)
	return append(msg, transcript...), nil
}

// LogValue shows the sizes of a wrap result, not the wrapped key.
func (r WrapResult) LogValue() slog.Value {
	return slog.GroupValue(slog.Int("raka_bytes", len(r.RAKA)), slog.Int("wrapped_bytes", len(r.Wrapped)))
}

// LogValue shows what an unwrap request is about, not the wrapped key.
func (r UnwrapRequest) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("replication_id", r.Context.ReplicationID),
		slog.String("key", r.Context.Ref().String()),
		slog.Int("wrapped_bytes", len(r.Wrapped)))
}
