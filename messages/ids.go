package messages

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
)

// Sizes of the fixed-length fields.
const (
	KIDSize    = sha256.Size // kid: SHA-256 of the RSK's SubjectPublicKeyInfo DER
	DigestSize = sha512.Size384
	// RAKSize is the length of an uncompressed SEC1 P-384 point
	// (0x04 ‖ X ‖ Y).
	RAKSize = 1 + 2*48
	// KeyConfirmationSize is the length of an AES-CMAC tag.
	KeyConfirmationSize = 16
)

// transcriptLabel is the domain-separation label of [TranscriptDigest].
const transcriptLabel = "mrkrepl/1 transcript"

// NewID returns 32 lowercase hex digits from crypto/rand, for msg_id and replication_id.
func NewID() string {
	var b [16]byte
	// crypto/rand.Read never returns an error (it crashes the program
	// irrecoverably if the system's source fails).
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// NewKeyID returns a fresh multi-Region key id: "mrk-" followed by 32
// lowercase hex digits from crypto/rand.
func NewKeyID() string { return "mrk-" + NewID() }

// KID returns the key id of an RSK public key: SHA-256 of its SubjectPublicKeyInfo DER.
// pub must be an *ecdsa.PublicKey on P-384.
func KID(pub crypto.PublicKey) ([]byte, error) {
	der, err := rskSPKI(pub)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(der)
	return sum[:], nil
}

// rskSPKI checks that pub is a valid ECDSA P-384 public key and returns its
// SubjectPublicKeyInfo DER.
func rskSPKI(pub crypto.PublicKey) ([]byte, error) {
	ek, ok := pub.(*ecdsa.PublicKey)
	if !ok || ek == nil {
		return nil, fmt.Errorf("rsk: want *ecdsa.PublicKey, got %T", pub)
	}
	if ek.Curve != elliptic.P384() {
		return nil, errors.New("rsk: curve is not P-384")
	}
	if _, err := ek.ECDH(); err != nil {
		return nil, errors.New("rsk: invalid P-384 public key")
	}
	der, err := x509.MarshalPKIXPublicKey(ek)
	if err != nil {
		return nil, fmt.Errorf("rsk: marshal public key: %w", err)
	}
	return der, nil
}

// Digest returns SHA-384 of an envelope's exact bytes.
func Digest(raw []byte) []byte {
	sum := sha512.Sum384(raw)
	return sum[:]
}

// TranscriptDigest returns SHA-384 over a versioned label and the digests of
// init, offer and material, the value both HSMs MAC for key confirmation.
//
// Each input, the label "mrkrepl/1 transcript" first, is prefixed with its
// length as a 4-byte big-endian integer:
//
//	SHA-384( len(label) ‖ label ‖ len(d1) ‖ d1 ‖ len(d2) ‖ d2 ‖ len(d3) ‖ d3 )
func TranscriptDigest(initDigest, offerDigest, materialDigest []byte) []byte {
	h := sha512.New384()
	var n [4]byte
	for _, field := range [][]byte{[]byte(transcriptLabel), initDigest, offerDigest, materialDigest} {
		binary.BigEndian.PutUint32(n[:], uint32(len(field)))
		h.Write(n[:])
		h.Write(field)
	}
	return h.Sum(nil)
}

// IsID reports whether s is a well-formed msg_id or replication_id: 32
// lowercase hex digits.
func IsID(s string) bool { return len(s) == 32 && isLowerHex(s) }

// IsKeyID reports whether s is a well-formed multi-Region key id: "mrk-"
// followed by 32 lowercase hex digits.
func IsKeyID(s string) bool { return len(s) == 36 && s[:4] == "mrk-" && isLowerHex(s[4:]) }

// IsName reports whether s is a well-formed region or partition name: 1 to
// 63 characters, each a lowercase ASCII letter, a digit or '-'. Such a name
// is a single NATS subject token.
func IsName(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
