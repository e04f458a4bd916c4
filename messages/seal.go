package messages

import (
	"crypto"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"

	"github.com/veraison/go-cose"
)

// Seal checks m (v, type, body matching type, ids, regions, times) and returns
// the signed COSE_Sign1 envelope. signer must hold an ECDSA P-384 key; the kid
// is computed from signer.Public(). The signature is normalised to low-S.
//
// Seal refuses what [Verify] would refuse without a bundle or a clock: a
// message that fails [Message.Validate] or whose src and dst are the same
// region. signer may be an HSM key (PKCS#11); it is called once, with a
// SHA-384 digest and crypto.SHA384 as options, and must return an ASN.1
// ECDSA signature.
func Seal(m *Message, signer crypto.Signer) ([]byte, error) {
	if err := cdc.ready(); err != nil {
		return nil, err
	}
	if signer == nil {
		return nil, errors.New("seal: no signer")
	}
	if ve := checkMessage(m); ve != nil {
		return nil, fmt.Errorf("seal: %w", ve)
	}
	if m.Src == m.Dst {
		return nil, fmt.Errorf("seal: %w", refuse(ReasonReflected, "src and dst are the same region"))
	}
	kid, err := KID(signer.Public())
	if err != nil {
		return nil, fmt.Errorf("seal: signer: %w", err)
	}
	payload, err := encodePayload(m)
	if err != nil {
		return nil, fmt.Errorf("seal: encode payload: %w", err)
	}
	raw, err := sign1(payload, kid, signer)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	// Never emit what Parse refuses: this catches a message too large for
	// MaxMessageSize and any disagreement between go-cose's encoding and
	// the canonical form Parse rebuilds.
	if _, _, err := parse(raw); err != nil {
		return nil, fmt.Errorf("seal: self-check: %w", err)
	}
	return raw, nil
}

// sign1 makes the COSE_Sign1 envelope (ES384, low-S, the kid in the
// protected header, no unprotected header) of payload: the one envelope of
// protocol messages (Seal) and signed bundles (SignBundle).
func sign1(payload, kid []byte, signer crypto.Signer) ([]byte, error) {
	cs, err := cose.NewSigner(cose.AlgorithmES384, lowSSigner{signer})
	if err != nil {
		return nil, err
	}
	msg := &cose.Sign1Message{
		Headers: cose.Headers{
			Protected: cose.ProtectedHeader{
				cose.HeaderLabelAlgorithm: cose.AlgorithmES384,
				cose.HeaderLabelKeyID:     kid,
			},
			Unprotected: cose.UnprotectedHeader{},
		},
		Payload: payload,
	}
	if err := msg.Sign(rand.Reader, nil, cs); err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	raw, err := msg.MarshalCBOR()
	if err != nil {
		return nil, fmt.Errorf("encode envelope: %w", err)
	}
	return raw, nil
}

// p384 holds the order n of P-384 and n/2, the largest accepted s.
var p384 = struct{ n, halfN *big.Int }{
	n:     elliptic.P384().Params().N,
	halfN: new(big.Int).Rsh(elliptic.P384().Params().N, 1),
}

// lowSSigner wraps an ECDSA P-384 crypto.Signer so that its signatures have
// s ≤ n/2. The wrapped signer may be a PKCS#11 key that cannot be asked for
// low-S, so the signature is normalised after signing: (r, n−s) is the other
// valid signature for the same digest. Being a distinct type, it also makes
// go-cose take its generic crypto.Signer path even for an
// *ecdsa.PrivateKey.
type lowSSigner struct {
	crypto.Signer
}

func (s lowSSigner) Sign(rand io.Reader, digest []byte, _ crypto.SignerOpts) ([]byte, error) {
	sig, err := s.Signer.Sign(rand, digest, crypto.SHA384)
	if err != nil {
		return nil, err
	}
	return normalizeLowS(sig)
}

// ecdsaSig is the ASN.1 form of an ECDSA signature (RFC 5480, section 2.2.3).
type ecdsaSig struct {
	R, S *big.Int
}

// normalizeLowS parses an ASN.1 ECDSA P-384 signature and returns it with s
// replaced by n−s if s > n/2.
func normalizeLowS(der []byte) ([]byte, error) {
	var sig ecdsaSig
	rest, err := asn1.Unmarshal(der, &sig)
	if err != nil || len(rest) != 0 {
		return nil, errors.New("signer returned a malformed ECDSA signature")
	}
	if !inScalarRange(sig.R) || !inScalarRange(sig.S) {
		return nil, errors.New("signer returned an ECDSA signature out of range")
	}
	if sig.S.Cmp(p384.halfN) <= 0 {
		return der, nil
	}
	sig.S = new(big.Int).Sub(p384.n, sig.S)
	return asn1.Marshal(sig)
}

// inScalarRange reports whether 1 ≤ x < n.
func inScalarRange(x *big.Int) bool {
	return x != nil && x.Sign() > 0 && x.Cmp(p384.n) < 0
}
