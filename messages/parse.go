package messages

import (
	"bytes"
	"errors"
	"io"
	"math/big"

	"github.com/fxamacker/cbor/v2"
)

// COSE constants of the envelope.
const (
	coseTagSign1 = 18 // COSE_Sign1_Tagged (RFC 9052, section 4.2)
	labelAlg     = 1  // protected header label: alg
	labelKID     = 4  // protected header label: kid
	algES384     = -35
	sigSize      = 2 * 48 // ES384 signature: r ‖ s, 48 bytes each
)

// parts are the signed pieces of an envelope, as Verify needs them.
type parts struct {
	rawProtected []byte // the protected header as a CBOR byte string item
	payload      []byte
	signature    []byte
}

// Parse decodes an envelope strictly without checking its signature or
// any bundle (for inspect and for fuzzing). Errors are *VerifyError with
// ReasonMalformed / ReasonNonCanonical / ReasonBadAlgorithm / ReasonTooLarge.
//
// Parse also applies [Message.Validate], so ReasonBadVersion is possible
// too. The checks run in this order: size; CBOR structure of the envelope
// (tag 18, an array of four, byte strings, empty unprotected header,
// embedded payload); the protected header (alg, then no label but alg and
// kid, then a 32-byte kid); the ES384 signature's length; the payload's
// decoding into [Message]; byte equality with the canonical re-encoding;
// low-S; Validate. The returned Envelope does not share memory with raw.
func Parse(raw []byte) (*Envelope, error) {
	env, _, err := parse(raw)
	if err != nil {
		return nil, err
	}
	return env, nil
}

// parse is Parse, also returning the signed parts. Its error is a
// *VerifyError, or a plain error if the codec is unavailable.
func parse(in []byte) (*Envelope, *parts, error) {
	if err := cdc.ready(); err != nil {
		return nil, nil, err
	}
	if len(in) > MaxMessageSize {
		return nil, nil, refuse(ReasonTooLarge, "envelope larger than MaxMessageSize")
	}
	if len(in) == 0 {
		return nil, nil, malformed("empty envelope")
	}
	// Work on a private copy, so that what is checked, verified and
	// returned cannot change under us.
	raw := bytes.Clone(in)

	// COSE_Sign1_Tagged = #6.18([protected, unprotected, payload, signature])
	if major(raw) != majorTag {
		return nil, nil, malformed("envelope: not a tagged COSE_Sign1")
	}
	var tag cbor.RawTag
	if err := cdc.tagged.Unmarshal(raw, &tag); err != nil {
		return nil, nil, malformed("envelope: %s", describeCBORError(err))
	}
	if tag.Number != coseTagSign1 {
		return nil, nil, malformed("envelope: tag is not COSE_Sign1 (18)")
	}
	if major(tag.Content) != majorArray {
		return nil, nil, malformed("envelope: not an array")
	}
	var items []cbor.RawMessage
	if err := cdc.strict.Unmarshal(tag.Content, &items); err != nil {
		return nil, nil, malformed("envelope: %s", describeCBORError(err))
	}
	if len(items) != 4 {
		return nil, nil, malformed("envelope: want an array of 4 items")
	}
	protected, ok := decodeBstr(items[0])
	if !ok {
		return nil, nil, malformed("protected header: not a byte string")
	}
	if major(items[1]) != majorMap {
		return nil, nil, malformed("unprotected header: not a map")
	}
	var unprotected map[any]cbor.RawMessage
	if err := cdc.strict.Unmarshal(items[1], &unprotected); err != nil {
		return nil, nil, malformed("unprotected header: %s", describeCBORError(err))
	}
	if len(unprotected) != 0 {
		return nil, nil, malformed("unprotected header: not empty")
	}
	if bytes.Equal(items[2], []byte{0xf6}) {
		return nil, nil, malformed("payload: detached (nil)")
	}
	payload, ok := decodeBstr(items[2])
	if !ok {
		return nil, nil, malformed("payload: not a byte string")
	}
	signature, ok := decodeBstr(items[3])
	if !ok {
		return nil, nil, malformed("signature: not a byte string")
	}

	kid, ve := parseProtected(protected)
	if ve != nil {
		return nil, nil, ve
	}
	if len(signature) != sigSize {
		return nil, nil, malformed("signature: want %d bytes", sigSize)
	}

	var m Message
	if major(payload) != majorMap {
		return nil, nil, malformed("payload: not a map")
	}
	if err := cdc.strict.Unmarshal(payload, &m); err != nil {
		return nil, nil, malformed("payload: %s", describeCBORError(err))
	}

	// There is exactly one accepted encoding of a message: rebuild it from
	// the decoded parts and require the input to be that encoding.
	canonPayload, err := encodePayload(&m)
	if err != nil {
		// A decoded Message always encodes; should it ever not, refuse
		// rather than accept bytes that were not checked.
		return nil, nil, malformed("payload: cannot re-encode")
	}
	canonProtected := canonicalProtected(kid)
	if !bytes.Equal(raw, canonicalEnvelope(canonProtected, canonPayload, signature)) {
		switch {
		case !bytes.Equal(protected, canonProtected):
			return nil, nil, refuse(ReasonNonCanonical, "protected header: not the canonical encoding")
		case !bytes.Equal(payload, canonPayload):
			return nil, nil, refuse(ReasonNonCanonical, "payload: not the canonical encoding")
		default:
			return nil, nil, refuse(ReasonNonCanonical, "envelope: not the canonical encoding")
		}
	}
	if new(big.Int).SetBytes(signature[sigSize/2:]).Cmp(p384.halfN) > 0 {
		return nil, nil, refuse(ReasonNonCanonical, "signature: s > n/2 (high-S)")
	}

	if ve := checkMessage(&m); ve != nil {
		return nil, nil, ve
	}
	env := &Envelope{
		KID:     kid,
		Message: m,
		Raw:     raw,
		Digest:  Digest(raw),
	}
	p := &parts{rawProtected: items[0], payload: payload, signature: signature}
	return env, p, nil
}

// parseProtected checks the protected header: a map holding exactly alg
// (ES384) and a 32-byte kid.
func parseProtected(protected []byte) ([]byte, *VerifyError) {
	if len(protected) == 0 {
		return nil, refuse(ReasonBadAlgorithm, "protected header: empty, no alg")
	}
	if major(protected) != majorMap {
		return nil, malformed("protected header: not a map")
	}
	var hdr map[int64]cbor.RawMessage
	if err := cdc.strict.Unmarshal(protected, &hdr); err != nil {
		return nil, malformed("protected header: %s", describeCBORError(err))
	}
	rawAlg, ok := hdr[labelAlg]
	if !ok {
		return nil, refuse(ReasonBadAlgorithm, "protected header: no alg")
	}
	var alg int64
	if err := cdc.strict.Unmarshal(rawAlg, &alg); err != nil || major(rawAlg) > majorNint {
		return nil, refuse(ReasonBadAlgorithm, "protected header: alg is not an integer")
	}
	if alg != algES384 {
		return nil, refuse(ReasonBadAlgorithm, "protected header: alg is not ES384 (-35)")
	}
	for label := range hdr {
		if label != labelAlg && label != labelKID {
			return nil, malformed("protected header: unexpected label")
		}
	}
	rawKID, ok := hdr[labelKID]
	if !ok {
		return nil, malformed("protected header: no kid")
	}
	kid, ok := decodeBstr(rawKID)
	if !ok || len(kid) != KIDSize {
		return nil, malformed("protected header: kid is not a %d-byte string", KIDSize)
	}
	return kid, nil
}

// canonicalProtected returns the one accepted protected header:
// {1: -35, 4: h'<kid>'} in core deterministic encoding.
func canonicalProtected(kid []byte) []byte {
	b := make([]byte, 0, 7+len(kid))
	b = appendHead(b, majorMap, 2)
	b = appendHead(b, majorUint, labelAlg)
	b = appendHead(b, majorNint, -1-algES384)
	b = appendHead(b, majorUint, labelKID)
	b = appendHead(b, majorBstr, uint64(len(kid)))
	return append(b, kid...)
}

// canonicalEnvelope returns
// #6.18([h'<protected>', {}, h'<payload>', h'<signature>']) with the
// shortest heads.
func canonicalEnvelope(protected, payload, signature []byte) []byte {
	b := make([]byte, 0, 2+9*3+1+len(protected)+len(payload)+len(signature))
	b = appendHead(b, majorTag, coseTagSign1)
	b = appendHead(b, majorArray, 4)
	b = appendHead(b, majorBstr, uint64(len(protected)))
	b = append(b, protected...)
	b = appendHead(b, majorMap, 0)
	b = appendHead(b, majorBstr, uint64(len(payload)))
	b = append(b, payload...)
	b = appendHead(b, majorBstr, uint64(len(signature)))
	return append(b, signature...)
}

// CBOR major types (RFC 8949, section 3.1).
const (
	majorUint  = 0
	majorNint  = 1
	majorBstr  = 2
	majorTstr  = 3
	majorArray = 4
	majorMap   = 5
	majorTag   = 6
	majorOther = 7
)

// major returns the major type of the first data item of b, or majorOther
// for empty input.
func major(b []byte) int {
	if len(b) == 0 {
		return majorOther
	}
	return int(b[0] >> 5)
}

// appendHead appends the shortest head for major type m and argument n.
func appendHead(b []byte, m int, n uint64) []byte {
	mt := byte(m) << 5
	switch {
	case n < 24:
		return append(b, mt|byte(n))
	case n <= 0xff:
		return append(b, mt|24, byte(n))
	case n <= 0xffff:
		return append(b, mt|25, byte(n>>8), byte(n))
	case n <= 0xffffffff:
		return append(b, mt|26, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	default:
		return append(b, mt|27, byte(n>>56), byte(n>>48), byte(n>>40), byte(n>>32),
			byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
}

// decodeBstr decodes one definite-length CBOR byte string. It refuses any
// other type (fxamacker/cbor would also decode an array of small integers
// into a []byte).
func decodeBstr(item []byte) ([]byte, bool) {
	if major(item) != majorBstr {
		return nil, false
	}
	var b []byte
	if err := cdc.strict.Unmarshal(item, &b); err != nil {
		return nil, false
	}
	if b == nil {
		b = []byte{}
	}
	return b, true
}

// describeCBORError maps a decoding error to a short, fixed description.
// The library's messages can quote input (duplicate keys), so they are not
// passed on.
func describeCBORError(err error) string {
	var (
		extra    *cbor.ExtraneousDataError
		dup      *cbor.DupMapKeyError
		unknown  *cbor.UnknownFieldError
		indef    *cbor.IndefiniteLengthError
		tags     *cbor.TagsMdError
		nested   *cbor.MaxNestedLevelError
		elems    *cbor.MaxArrayElementsError
		pairs    *cbor.MaxMapPairsError
		typ      *cbor.UnmarshalTypeError
		syntax   *cbor.SyntaxError
		semantic *cbor.SemanticError
	)
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "truncated"
	case errors.As(err, &extra):
		return "trailing bytes"
	case errors.As(err, &dup):
		return "duplicate map key"
	case errors.As(err, &unknown):
		return "unknown field"
	case errors.As(err, &indef):
		return "indefinite-length item"
	case errors.As(err, &tags):
		return "tag not allowed"
	case errors.As(err, &nested):
		return "nested too deeply"
	case errors.As(err, &elems):
		return "array too long"
	case errors.As(err, &pairs):
		return "map too large"
	case errors.As(err, &typ):
		if typ.StructFieldName != "" {
			// A Go type and a CBOR field name of ours, never input.
			return "wrong type for " + typ.StructFieldName
		}
		return "wrong type"
	case errors.As(err, &syntax):
		return "invalid cbor"
	case errors.As(err, &semantic):
		return "invalid cbor value"
	default:
		return "invalid"
	}
}
