package repl

import (
	"math"

	"github.com/mrkrepl/mrkrepl/api"
)

// MaxEpochJump bounds how far one key.sync or primary.hand-over may move a
// replica's epoch forward. The epoch grows by one with each change of the
// key's shared state (a version activated, a description, a hand-over), so
// a replica that missed 2^24 (about 16.7 million) changes between two
// messages is not a case that occurs; a larger jump is a primary (or a
// region claiming to be one) driving the epoch toward overflow. With
// MaxEpoch it leaves a primary 2^63 increments of headroom (review L3).
const MaxEpochJump = 1 << 24

// MaxEpoch: an epoch is refused from 2^63 on, so that incrementing an
// accepted one never wraps.
const MaxEpoch = math.MaxInt64

// CheckEpoch refuses a received epoch ≥ 2^63 or more than MaxEpochJump
// beyond the epoch held (an epoch not above the one held is the caller's
// to judge).
func CheckEpoch(held, got uint64) *Refusal {
	switch {
	case got > MaxEpoch:
		return Refuse(ReasonEpochRange, "epoch %d: at most %d", got, uint64(MaxEpoch))
	case got > held && got-held > MaxEpochJump:
		return Refuse(ReasonEpochRange, "epoch %d is %d beyond the %d held: at most %d at once", got, got-held, held, MaxEpochJump)
	}
	return nil
}

// CheckProperties refuses key properties this build does not support: a
// key is SYMMETRIC_DEFAULT for ENCRYPT_DECRYPT (review L3).
func CheckProperties(what, spec, usage string) *Refusal {
	if spec != api.KeySpecSymmetricDefault || usage != api.KeyUsageEncryptDecrypt {
		return Refuse(ReasonBadProperties, "%s: key_spec %q, key_usage %q; supported: %s, %s", what, spec, usage, api.KeySpecSymmetricDefault, api.KeyUsageEncryptDecrypt)
	}
	return nil
}
