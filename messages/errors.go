package messages

import "errors"

// Reason is a machine-readable cause of refusal, used in metrics labels and
// dead-letter headers.
type Reason string

// The reasons a message is refused. [Reasons] lists them in the order
// [Verify] checks them (docs/PROTOCOL.md, "Verification"). The strings are
// part of the protocol's operational interface: they appear in dead-letter
// headers and metric labels and do not change.
const (
	ReasonTooLarge       Reason = "too_large"
	ReasonMalformed      Reason = "malformed"
	ReasonNonCanonical   Reason = "non_canonical"
	ReasonBadAlgorithm   Reason = "bad_algorithm"
	ReasonUnknownKID     Reason = "unknown_kid"
	ReasonKIDWrongRegion Reason = "kid_wrong_region"
	ReasonKIDNotValid    Reason = "kid_not_valid"
	ReasonBadSignature   Reason = "bad_signature"
	ReasonBadVersion     Reason = "bad_version"
	ReasonWrongPartition Reason = "wrong_partition"
	ReasonUnknownRegion  Reason = "unknown_region"
	ReasonWrongDst       Reason = "wrong_dst"
	ReasonReflected      Reason = "reflected"
	ReasonExpired        Reason = "expired"
	ReasonFromFuture     Reason = "from_future"
	ReasonSubject        Reason = "subject_mismatch"
	// ReasonLifetime refuses a lifecycle message whose lifetime
	// (expires_at − sent_at) exceeds VerifyOptions.MaxLifecycleLifetime:
	// given only when that option is set (OptionReasons).
	ReasonLifetime Reason = "lifetime_exceeds_window"
)

// OptionReasons are the reasons Verify gives only when an option asks for
// the check (VerifyOptions.MaxLifecycleLifetime), beyond Reasons.
func OptionReasons() []Reason { return []Reason{ReasonLifetime} }

// Reasons returns every Reason in the order Verify checks them, for
// pre-initialising metric series.
func Reasons() []Reason {
	return []Reason{
		ReasonTooLarge,
		ReasonMalformed,
		ReasonBadAlgorithm,
		ReasonNonCanonical,
		ReasonBadVersion,
		ReasonUnknownKID,
		ReasonBadSignature,
		ReasonKIDWrongRegion,
		ReasonKIDNotValid,
		ReasonWrongPartition,
		ReasonUnknownRegion,
		ReasonReflected,
		ReasonWrongDst,
		ReasonExpired,
		ReasonFromFuture,
		ReasonSubject,
	}
}

// VerifyError is returned for every refused message.
type VerifyError struct {
	Reason Reason
	Detail string // human-readable, never contains secret material
}

func (e *VerifyError) Error() string { return "message refused: " + string(e.Reason) + ": " + e.Detail }

// Is reports whether target is [ErrBadSignature] and e is a signature failure.
func (e *VerifyError) Is(target error) bool {
	return target == ErrBadSignature && e.Reason == ReasonBadSignature
}

// Unwrap returns [ErrBadSignature] for a signature failure, nil otherwise.
func (e *VerifyError) Unwrap() error {
	if e.Reason == ReasonBadSignature {
		return ErrBadSignature
	}
	return nil
}

// ErrBadSignature is matched by errors.Is for a VerifyError whose Reason is ReasonBadSignature.
var ErrBadSignature = errors.New("bad signature")

// ReasonOf returns the Reason of the [*VerifyError] in err's chain, or "" if
// there is none.
func ReasonOf(err error) Reason {
	var ve *VerifyError
	if errors.As(err, &ve) {
		return ve.Reason
	}
	return ""
}

func refuse(r Reason, detail string) *VerifyError {
	return &VerifyError{Reason: r, Detail: detail}
}
