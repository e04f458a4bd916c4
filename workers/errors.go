package workers

import (
	"fmt"

	"github.com/mrkrepl/mrkrepl/api"
)

// This file holds the two kinds of error the state machine returns: an API
// error reply (apiError) and a refused message (refusal).

// apiError is an error reply of the request API.
type apiError struct {
	Code   string
	Detail string
}

func (e *apiError) Error() string { return e.Detail }

func badRequest(format string, args ...any) error {
	return &apiError{Code: api.CodeBadRequest, Detail: fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) error {
	return &apiError{Code: api.CodeNotFound, Detail: fmt.Sprintf(format, args...)}
}

func conflict(format string, args ...any) error {
	return &apiError{Code: api.CodeConflict, Detail: fmt.Sprintf(format, args...)}
}

// with Reason and terminated. Reasons are messages.Reason values or the
// worker's own state reasons below.
type refusal struct {
	Reason string
	Detail string
}

func (r *refusal) Error() string { return "refused: " + r.Reason + ": " + r.Detail }

func refuse(reason, format string, args ...any) error {
	return &refusal{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// Worker-side refusal reasons, beyond messages.Reason.
const (
	reasonReplayedMsgID = "replayed_msg_id" // same msg_id, different bytes
	reasonUnknownRun    = "unknown_replication"
	reasonStateMismatch = "state_mismatch" // type or digest does not fit the run's state
	reasonWrongPeer     = "wrong_peer"     // message from a region that is not the run's peer
	reasonNotPrimary    = "not_primary"    // init from a region that is not the key's primary
	reasonKeyExists     = "key_exists"     // init for a key version this region already holds
	reasonRunExpired    = "replication_expired"
	reasonUnknownKey    = "unknown_key" // lifecycle message for a key this region does not hold
)
