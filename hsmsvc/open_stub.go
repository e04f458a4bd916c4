package hsmsvc

// API SKELETON — to be implemented (this file is replaced).

import (
	"context"
	"errors"
)

// KeyConfirmationLabel prefixes the transcript in the key confirmation MAC.
const KeyConfirmationLabel = "mrkrepl/1 key-confirmation"

// KDFAlgorithmID is the first FixedInfo field.
const KDFAlgorithmID = "mrkrepl/1 RWK ECDH-P384 SSKDF-SHA384 AES-256-KWP"

// FixedInfo encodes c for the one-step KDF: KDFAlgorithmID, then every field
// in declaration order, each prefixed with its length as a 4-byte big-endian
// integer (Version as 4 bytes big-endian).
func (c *KDFContext) FixedInfo() []byte { return nil }

// Open returns the backend named by uri.
func Open(ctx context.Context, uri string, opts Options) (HSM, error) {
	return nil, errors.New("hsmsvc: not implemented")
}
