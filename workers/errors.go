package workers

import (
	"github.com/mrkrepl/mrkrepl/internal/repl"
)

// This file holds the two kinds of error the state machine returns, both
// the core's (internal/repl): an API error reply (apiError) and a refused
// message (refusal), which the inbox dead-letters.

type (
	apiError = repl.RequestError
	refusal  = repl.Refusal
)

func badRequest(format string, args ...any) error { return repl.BadRequest(format, args...) }
func notFound(format string, args ...any) error   { return repl.NotFound(format, args...) }
func conflict(format string, args ...any) error   { return repl.Conflict(format, args...) }
func refuse(reason, format string, args ...any) error {
	return repl.Refuse(reason, format, args...)
}

// Refusal reasons (repl.Reason*), beyond messages.Reason.
const (
	reasonReplayedMsgID = repl.ReasonReplayedMsgID
	reasonUnknownRun    = repl.ReasonUnknownRun
	reasonStateMismatch = repl.ReasonStateMismatch
	reasonWrongPeer     = repl.ReasonWrongPeer
	reasonNotPrimary    = repl.ReasonNotPrimary
	reasonKeyExists     = repl.ReasonKeyExists
	reasonRunExpired    = repl.ReasonRunExpired
	reasonUnknownKey    = repl.ReasonUnknownKey
	reasonBadProperties = repl.ReasonBadProperties
	reasonEpochRange    = repl.ReasonEpochRange
)
