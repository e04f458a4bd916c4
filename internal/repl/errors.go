package repl

import (
	"fmt"

	"github.com/mrkrepl/mrkrepl/api"
)

// Refusal is a message that will never be acted on: the shell dead-letters
// it with Reason and terminates it. Reasons are messages.Reason values or
// the core's own reasons below.
type Refusal struct {
	Reason string
	Detail string
}

func (r *Refusal) Error() string { return "refused: " + r.Reason + ": " + r.Detail }

// Refuse makes a Refusal.
func Refuse(reason, format string, args ...any) *Refusal {
	return &Refusal{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// Refusal reasons, beyond messages.Reason.
const (
	ReasonReplayedMsgID = "replayed_msg_id" // same msg_id, different bytes
	ReasonUnknownRun    = "unknown_replication"
	ReasonStateMismatch = "state_mismatch" // type or digest does not fit the run's state
	ReasonWrongPeer     = "wrong_peer"     // message from a region that is not the run's peer
	ReasonNotPrimary    = "not_primary"    // init from a region that is not the key's primary
	ReasonKeyExists     = "key_exists"     // init for a key version this region already holds
	ReasonRunExpired    = "replication_expired"
	ReasonUnknownKey    = "unknown_key"        // lifecycle message for a key this region does not hold
	ReasonBadProperties = "bad_properties"     // key_spec/key_usage unsupported, or material's differ from the init's
	ReasonEpochRange    = "epoch_out_of_range" // an epoch ≥ 2^63 or a jump beyond messages' bound
)

// RequestError is the answer to an API request the core turns down, with
// the API's error code.
type RequestError struct {
	Code   string
	Detail string
}

func (e *RequestError) Error() string { return e.Detail }

// BadRequest is a RequestError with api.CodeBadRequest.
func BadRequest(format string, args ...any) *RequestError {
	return &RequestError{Code: api.CodeBadRequest, Detail: fmt.Sprintf(format, args...)}
}

// NotFound is a RequestError with api.CodeNotFound.
func NotFound(format string, args ...any) *RequestError {
	return &RequestError{Code: api.CodeNotFound, Detail: fmt.Sprintf(format, args...)}
}

// Conflict is a RequestError with api.CodeConflict.
func Conflict(format string, args ...any) *RequestError {
	return &RequestError{Code: api.CodeConflict, Detail: fmt.Sprintf(format, args...)}
}
