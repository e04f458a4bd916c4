package workers

import (
	"math"

	"github.com/mrkrepl/mrkrepl/api"
)

// maxEpochJump bounds how far one key.sync or primary.hand-over may move a
// replica's epoch forward. The epoch grows by one with each change of the
// key's shared state (a version activated, a description, a hand-over), so
// a replica that missed 2^24 (about 16.7 million) changes between two
// messages is not a case that occurs; a larger jump is a primary (or a
// region claiming to be one) driving the epoch toward overflow. With
// maxEpoch it leaves a primary 2^63 increments of headroom (review L3).
const maxEpochJump = 1 << 24

// maxEpoch: an epoch is refused from 2^63 on, so that incrementing an
// accepted one never wraps.
const maxEpoch = math.MaxInt64

// checkEpoch refuses a received epoch ≥ 2^63 or more than maxEpochJump
// beyond the epoch held (an epoch not above the one held is the caller's
// to judge).
func checkEpoch(held, got uint64) error {
	switch {
	case got > maxEpoch:
		return refuse(reasonEpochRange, "epoch %d: at most %d", got, uint64(maxEpoch))
	case got > held && got-held > maxEpochJump:
		return refuse(reasonEpochRange, "epoch %d is %d beyond the %d held: at most %d at once", got, got-held, held, maxEpochJump)
	}
	return nil
}

// checkProperties refuses key properties this build does not support: a
// key is SYMMETRIC_DEFAULT for ENCRYPT_DECRYPT (review L3).
func checkProperties(what, spec, usage string) error {
	if spec != api.KeySpecSymmetricDefault || usage != api.KeyUsageEncryptDecrypt {
		return refuse(reasonBadProperties, "%s: key_spec %q, key_usage %q; supported: %s, %s", what, spec, usage, api.KeySpecSymmetricDefault, api.KeyUsageEncryptDecrypt)
	}
	return nil
}
