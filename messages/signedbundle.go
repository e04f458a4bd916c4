package messages

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"
)

// A signed trust bundle is the exact bytes of a bundle's JSON form, signed
// by the partition's root key (an ECDSA P-384 key kept offline) together
// with a serial that grows with every bundle the root signs. A worker or a
// proxy accepts a bundle only from [VerifyBundle]: so whoever can write the
// bundle file cannot add an RSK (no root signature) or bring back an older
// bundle and the retired RSKs in it (a lower serial).
//
// The form is a COSE_Sign1 (docs/PROTOCOL.md, "Signed trust bundle"):
//
//	#6.18([ h'{1: -35, 4: h'<root kid>'}', {}, h'<payload>', h'<r ‖ s>' ])
//
// with the same envelope rules as a protocol message (core deterministic
// CBOR, an empty unprotected header, ES384, low-S, the kid being SHA-256 of
// the root key's SubjectPublicKeyInfo DER), and the payload the map
//
//	{"label": "mrkrepl-bundle-v1", "bundle": h'<bundle JSON>', "serial": uint, "partition": tstr}
//
// The label says what the signature is for, and its version; a protocol
// message has no "label" field, so neither can pass for the other.

// BundleLabel is the label of the signed-bundle payload, version 1.
const BundleLabel = "mrkrepl-bundle-v1"

// MaxSignedBundleSize bounds a signed bundle: the largest bundle and room
// for the envelope.
const MaxSignedBundleSize = MaxBundleSize + 1024

// The refusals of [VerifyBundle], for errors.Is. Every error it returns
// matches exactly one of them.
var (
	// ErrBundleUnsigned: the input is a bare JSON bundle, not a signed one.
	ErrBundleUnsigned = errors.New("trust bundle is not signed")
	// ErrBundleMalformed: not a valid signed bundle (envelope, payload or
	// the bundle inside).
	ErrBundleMalformed = errors.New("signed trust bundle malformed")
	// ErrBundleBadSignature: not signed by the given root key (another
	// kid, or the signature does not verify).
	ErrBundleBadSignature = errors.New("trust bundle not signed by the root key")
	// ErrBundleWrongPartition: the signed partition is not the bundle's,
	// or not the one expected.
	ErrBundleWrongPartition = errors.New("trust bundle of another partition")
	// ErrBundleOlderSerial: the serial is below the minimum accepted.
	ErrBundleOlderSerial = errors.New("trust bundle older than the one accepted")
)

// SignedBundle is a verified signed bundle.
type SignedBundle struct {
	Bundle    *Bundle
	Serial    uint64
	Partition string
	RootKID   []byte // SHA-256 of the root key's SubjectPublicKeyInfo DER
	JSON      []byte // the exact bundle bytes that were signed
}

// signedBundlePayload is the payload map. Every field is required.
type signedBundlePayload struct {
	Label     string `cbor:"label"`
	Bundle    []byte `cbor:"bundle"`
	Serial    uint64 `cbor:"serial"`
	Partition string `cbor:"partition"`
}

// SignBundle signs the JSON form of a bundle (the exact bytes, which must
// pass [ParseBundle]) with the partition's root key under serial (at least
// 1). signer must hold an ECDSA P-384 key (a file key or a PKCS#11 one); it
// is called once, with a SHA-384 digest.
func SignBundle(bundleJSON []byte, serial uint64, signer crypto.Signer) ([]byte, error) {
	if err := cdc.ready(); err != nil {
		return nil, err
	}
	if signer == nil {
		return nil, errors.New("sign bundle: no signer")
	}
	if serial == 0 {
		return nil, errors.New("sign bundle: serial 0: serials start at 1")
	}
	b, err := ParseBundle(bundleJSON)
	if err != nil {
		return nil, fmt.Errorf("sign bundle: %w", err)
	}
	kid, err := KID(signer.Public())
	if err != nil {
		return nil, fmt.Errorf("sign bundle: root key: %w", err)
	}
	payload, err := cdc.enc.Marshal(&signedBundlePayload{
		Label: BundleLabel, Bundle: bytes.Clone(bundleJSON), Serial: serial, Partition: b.Partition(),
	})
	if err != nil {
		return nil, fmt.Errorf("sign bundle: encode payload: %w", err)
	}
	raw, err := sign1(payload, kid, signer)
	if err != nil {
		return nil, fmt.Errorf("sign bundle: %w", err)
	}
	// Never emit what VerifyBundle refuses.
	if _, err := VerifySignedBundle(raw, signer.Public(), serial); err != nil {
		return nil, fmt.Errorf("sign bundle: self-check: %w", err)
	}
	return raw, nil
}

// VerifyBundle checks a signed bundle against the partition's root public
// key and returns the bundle and its serial. It refuses, with an error
// matching one of:
//
//   - [ErrBundleUnsigned]: a bare JSON bundle;
//   - [ErrBundleMalformed]: anything else that is not exactly the form
//     [SignBundle] makes (checked before the signature, on syntax only);
//   - [ErrBundleBadSignature]: the kid is not the root's, or the ES384
//     signature does not verify with root;
//   - [ErrBundleWrongPartition]: the signed partition differs from the
//     partition of the bundle inside;
//   - [ErrBundleOlderSerial]: the serial is below minSerial.
//
// A caller that has a bundle in force passes its serial as minSerial, so
// the same serial is accepted again (a re-read) and a lower one is not; it
// should also check that the partition is the one in force
// ([VerifyBundleFor]).
func VerifyBundle(signed []byte, root crypto.PublicKey, minSerial uint64) (*Bundle, uint64, error) {
	sb, err := VerifySignedBundle(signed, root, minSerial)
	if err != nil {
		return nil, 0, err
	}
	return sb.Bundle, sb.Serial, nil
}

// VerifyBundleFor is [VerifyBundle] that also refuses, with
// [ErrBundleWrongPartition], a bundle whose partition is not partition
// (unless partition is "").
func VerifyBundleFor(signed []byte, root crypto.PublicKey, partition string, minSerial uint64) (*SignedBundle, error) {
	sb, err := VerifySignedBundle(signed, root, minSerial)
	if err != nil {
		return nil, err
	}
	if partition != "" && sb.Partition != partition {
		return nil, fmt.Errorf("%w: partition %q, want %q", ErrBundleWrongPartition, sb.Partition, partition)
	}
	return sb, nil
}

// VerifySignedBundle is [VerifyBundle] returning everything that was
// signed.
func VerifySignedBundle(signed []byte, root crypto.PublicKey, minSerial uint64) (*SignedBundle, error) {
	if err := cdc.ready(); err != nil {
		return nil, err
	}
	rootKID, err := KID(root)
	if err != nil {
		return nil, fmt.Errorf("verify bundle: root key: %w", err)
	}
	sb, p, err := parseSignedBundle(signed)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(sb.RootKID, rootKID) {
		return nil, fmt.Errorf("%w: signed by kid %s, the root key is %s", ErrBundleBadSignature,
			hex.EncodeToString(sb.RootKID[:8]), hex.EncodeToString(rootKID[:8]))
	}
	// The verifier gets its own copy of the key (see Bundle.newEntry).
	spki, _ := rskSPKI(root) // cannot fail: KID succeeded
	own, err := x509.ParsePKIXPublicKey(spki)
	if err != nil {
		return nil, fmt.Errorf("verify bundle: root key: %w", err)
	}
	verifier, err := cose.NewVerifier(cose.AlgorithmES384, own)
	if err != nil {
		return nil, fmt.Errorf("verify bundle: root key: %w", err)
	}
	msg := &cose.Sign1Message{
		Headers: cose.Headers{
			RawProtected: p.rawProtected,
			Protected: cose.ProtectedHeader{
				cose.HeaderLabelAlgorithm: cose.AlgorithmES384,
				cose.HeaderLabelKeyID:     sb.RootKID,
			},
		},
		Payload:   p.payload,
		Signature: p.signature,
	}
	if err := msg.Verify(nil, verifier); err != nil {
		return nil, fmt.Errorf("%w: the signature does not verify", ErrBundleBadSignature)
	}
	// Only now is the content trusted enough to be parsed as a bundle.
	b, err := ParseBundle(sb.JSON)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBundleMalformed, err)
	}
	if b.Partition() != sb.Partition {
		return nil, fmt.Errorf("%w: signed for partition %q, the bundle inside is for %q", ErrBundleWrongPartition, sb.Partition, b.Partition())
	}
	if sb.Serial < minSerial {
		return nil, fmt.Errorf("%w: serial %d, the lowest accepted is %d", ErrBundleOlderSerial, sb.Serial, minSerial)
	}
	sb.Bundle = b
	return sb, nil
}

// ParseSignedBundle decodes a signed bundle strictly without checking its
// signature (for inspection): Bundle is nil, the other fields are what the
// envelope claims. Errors match ErrBundleUnsigned or ErrBundleMalformed.
func ParseSignedBundle(signed []byte) (*SignedBundle, error) {
	sb, _, err := parseSignedBundle(signed)
	return sb, err
}

func bundleMalformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBundleMalformed, fmt.Sprintf(format, args...))
}

// parseSignedBundle checks the syntax: the envelope as [Parse] checks a
// message's (tag 18, an array of four, the canonical protected header with
// ES384 and a 32-byte kid, an empty unprotected header, an embedded payload,
// a 96-byte low-S signature, canonical encoding), the payload (exactly the
// four fields, the label, a serial of at least 1, a valid partition name, a
// non-empty bundle).
func parseSignedBundle(in []byte) (*SignedBundle, *parts, error) {
	if len(in) > MaxSignedBundleSize {
		return nil, nil, bundleMalformed("larger than %d bytes", MaxSignedBundleSize)
	}
	if t := bytes.TrimLeft(in, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		return nil, nil, fmt.Errorf("%w: the file is a bare JSON bundle; sign it (mrkrepl bundle sign)", ErrBundleUnsigned)
	}
	if len(in) == 0 {
		return nil, nil, bundleMalformed("empty")
	}
	raw := bytes.Clone(in)
	if major(raw) != majorTag {
		return nil, nil, bundleMalformed("envelope: not a tagged COSE_Sign1")
	}
	var tag cbor.RawTag
	if err := cdc.tagged.Unmarshal(raw, &tag); err != nil {
		return nil, nil, bundleMalformed("envelope: %s", describeCBORError(err))
	}
	if tag.Number != coseTagSign1 || major(tag.Content) != majorArray {
		return nil, nil, bundleMalformed("envelope: not a tagged COSE_Sign1")
	}
	var items []cbor.RawMessage
	if err := cdc.strict.Unmarshal(tag.Content, &items); err != nil {
		return nil, nil, bundleMalformed("envelope: %s", describeCBORError(err))
	}
	if len(items) != 4 {
		return nil, nil, bundleMalformed("envelope: want an array of 4 items")
	}
	protected, ok := decodeBstr(items[0])
	if !ok {
		return nil, nil, bundleMalformed("protected header: not a byte string")
	}
	payload, ok := decodeBstr(items[2])
	if !ok {
		return nil, nil, bundleMalformed("payload: not an embedded byte string")
	}
	signature, ok := decodeBstr(items[3])
	if !ok || len(signature) != sigSize {
		return nil, nil, bundleMalformed("signature: want a %d-byte string", sigSize)
	}
	kid, ve := parseProtected(protected)
	if ve != nil {
		return nil, nil, bundleMalformed("%s", ve.Detail)
	}
	if major(payload) != majorMap {
		return nil, nil, bundleMalformed("payload: not a map")
	}
	var pl signedBundlePayload
	if err := cdc.strict.Unmarshal(payload, &pl); err != nil {
		return nil, nil, bundleMalformed("payload: %s", describeCBORError(err))
	}
	switch {
	case pl.Label != BundleLabel:
		return nil, nil, bundleMalformed("payload: label is not %q", BundleLabel)
	case pl.Serial == 0:
		return nil, nil, bundleMalformed("payload: no serial (serials start at 1)")
	case !IsName(pl.Partition):
		return nil, nil, bundleMalformed("payload: partition: bad name")
	case len(pl.Bundle) == 0:
		return nil, nil, bundleMalformed("payload: no bundle")
	}
	canonPayload, err := cdc.enc.Marshal(&pl)
	if err != nil {
		return nil, nil, bundleMalformed("payload: cannot re-encode")
	}
	if !bytes.Equal(raw, canonicalEnvelope(canonicalProtected(kid), canonPayload, signature)) {
		return nil, nil, bundleMalformed("not the canonical encoding")
	}
	if new(big.Int).SetBytes(signature[sigSize/2:]).Cmp(p384.halfN) > 0 {
		return nil, nil, bundleMalformed("signature: s > n/2 (high-S)")
	}
	sb := &SignedBundle{Serial: pl.Serial, Partition: pl.Partition, RootKID: kid, JSON: pl.Bundle}
	return sb, &parts{rawProtected: items[0], payload: payload, signature: signature}, nil
}
