package authz

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"unicode/utf8"
)

// Bounds of an encryption context. AWS bounds the whole context at 8 KiB;
// keys and values here fit a uint16 length prefix with room to spare, and
// 64 pairs are far more than any sensible context.
const (
	MaxContextPairs = 64
	MaxContextKey   = 2048 // bytes
	MaxContextValue = 2048 // bytes
	MaxContextTotal = 8192 // bytes: sum of every key's and value's length
)

// contextLabel separates the encoding from any other use of the same bytes
// and versions it.
const contextLabel = "mrkrepl/1 encryption-context\x00"

// ErrInvalidContext is wrapped by every error of [ValidateContext] and
// [EncodeContext]; callers answer it as a bad request.
var ErrInvalidContext = errors.New("invalid encryption context")

// EncodeContext returns the canonical encoding of an encryption context,
// bound into the AAD of every ciphertext made under it: the versioned label
// "mrkrepl/1 encryption-context\x00", then a uint16 count, then for each pair
// in byte-wise sorted key order uint16 len(key) ‖ key ‖ uint16 len(value) ‖
// value (big endian). An empty or nil map encodes as nothing at all (zero
// bytes), so ciphertexts without context keep working.
//
// Keys are 1..MaxContextKey bytes, values 0..MaxContextValue bytes, both
// valid UTF-8 (as AWS requires); at most MaxContextPairs pairs of at most
// MaxContextTotal bytes together.
func EncodeContext(ec map[string]string) ([]byte, error) {
	if err := ValidateContext(ec); err != nil {
		return nil, err
	}
	if len(ec) == 0 {
		return nil, nil
	}
	b := make([]byte, 0, len(contextLabel)+2+4*len(ec)+contextSize(ec))
	b = append(b, contextLabel...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(ec)))
	for _, k := range slices.Sorted(maps.Keys(ec)) {
		b = binary.BigEndian.AppendUint16(b, uint16(len(k)))
		b = append(b, k...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(ec[k])))
		b = append(b, ec[k]...)
	}
	return b, nil
}

// ValidateContext checks ec against the bounds of [EncodeContext]. Pairs are
// checked in key order, so the error is the same on every call.
func ValidateContext(ec map[string]string) error {
	if len(ec) > MaxContextPairs {
		return fmt.Errorf("%w: %d pairs, more than %d", ErrInvalidContext, len(ec), MaxContextPairs)
	}
	for _, k := range slices.Sorted(maps.Keys(ec)) {
		v := ec[k]
		switch {
		case k == "":
			return fmt.Errorf("%w: empty key", ErrInvalidContext)
		case len(k) > MaxContextKey:
			return fmt.Errorf("%w: key %.32q...: %d bytes, more than %d", ErrInvalidContext, k, len(k), MaxContextKey)
		case !utf8.ValidString(k):
			return fmt.Errorf("%w: key %q: not valid UTF-8", ErrInvalidContext, k)
		case len(v) > MaxContextValue:
			return fmt.Errorf("%w: value of key %q: %d bytes, more than %d", ErrInvalidContext, k, len(v), MaxContextValue)
		case !utf8.ValidString(v):
			return fmt.Errorf("%w: value of key %q: not valid UTF-8", ErrInvalidContext, k)
		}
	}
	if n := contextSize(ec); n > MaxContextTotal {
		return fmt.Errorf("%w: %d bytes of keys and values, more than %d", ErrInvalidContext, n, MaxContextTotal)
	}
	return nil
}

func contextSize(ec map[string]string) int {
	n := 0
	for k, v := range ec {
		n += len(k) + len(v)
	}
	return n
}
