package messages

import (
	"errors"
	"time"

	"github.com/veraison/go-cose"
)

// VerifyOptions says what a receiver expects.
type VerifyOptions struct {
	Bundle   *Bundle       // required
	Now      time.Time     // required
	Skew     time.Duration // allowed clock skew; 0 means DefaultSkew
	Receiver string        // if set, dst must equal it (a worker sets its region; the proxy leaves it empty)
	Subject  string        // if set, must be the outbox or inbox subject for this message
	// MaxLifecycleLifetime, if set, bounds expires_at − sent_at of a
	// lifecycle message (key.sync, key.status, primary.handover,
	// primary.accept); a longer one is refused (ReasonLifetime). The
	// receiver's replay cache remembers a lifecycle msg_id for its replay
	// window only, so a message that outlives the window minus the clock
	// skew could be replayed after its msg_id was forgotten: receivers set
	// it to that (layout.LifecycleMaxLifetime). The run's messages are
	// checked against the run's record instead and are not bounded here.
	MaxLifecycleLifetime time.Duration
}

// Lifecycle reports whether t is a lifecycle message type (one checked
// against the replay cache rather than a run's record).
func Lifecycle(t Type) bool {
	switch t {
	case TypeSync, TypeStatus, TypeHandover, TypeAccept:
		return true
	}
	return false
}

// DefaultSkew is the clock skew allowance used when VerifyOptions.Skew is 0.
const DefaultSkew = 30 * time.Second

// Errors for unusable VerifyOptions. They are caller mistakes, not
// refusals of a message, so they are not *VerifyError.
var (
	errNoBundle     = errors.New("verify: no trust bundle")
	errNoTime       = errors.New("verify: no current time")
	errNegativeSkew = errors.New("verify: negative clock skew")
)

// Verify parses raw strictly and applies every stateless check of the protocol.
//
// The checks run in this order, and the first failing one decides the
// [Reason]:
//
//  1. everything [Parse] checks: too_large, malformed, bad_algorithm,
//     non_canonical, bad_version;
//  2. unknown_kid: the protected header's kid is not in the bundle;
//  3. bad_signature: the ES384 signature does not verify with that key;
//  4. kid_wrong_region: the kid belongs to a region other than src;
//  5. kid_not_valid: sent_at is outside the kid's [not_before, not_after];
//  6. wrong_partition: partition is not the bundle's;
//  7. unknown_region: dst is not a region of the bundle (src is one: the
//     bundle binds kids only to its regions, and step 4 bound src to the
//     kid's region);
//  8. reflected: src equals dst;
//  9. wrong_dst: Receiver is set and dst is not Receiver (so src, which
//     differs from dst, differs from Receiver too);
//  10. expired: Now is after expires_at + skew;
//  11. from_future: sent_at is after Now + skew;
//  12. subject_mismatch: with Subject set, it is neither
//     OutboxSubject(src, dst, type) nor InboxSubject(dst, src, type).
//
// Nothing from the payload is trusted before the signature is checked: the
// only input to step 2 is the kid, and steps 1 and 2 only judge syntax. So
// every reason after bad_signature describes content that the kid's holder
// did sign.
//
// An error that is not a *VerifyError means opts are unusable (no bundle,
// no time, negative skew).
func Verify(raw []byte, opts VerifyOptions) (*Envelope, error) {
	if opts.Bundle == nil {
		return nil, errNoBundle
	}
	if opts.Now.IsZero() {
		return nil, errNoTime
	}
	skew := opts.Skew
	switch {
	case skew < 0:
		return nil, errNegativeSkew
	case skew == 0:
		skew = DefaultSkew
	}

	env, p, err := parse(raw)
	if err != nil {
		return nil, err
	}
	entry, ok := opts.Bundle.entry(env.KID)
	if !ok {
		return nil, refuse(ReasonUnknownKID, "kid not in the trust bundle")
	}
	msg := &cose.Sign1Message{
		Headers: cose.Headers{
			RawProtected: p.rawProtected,
			Protected: cose.ProtectedHeader{
				cose.HeaderLabelAlgorithm: cose.AlgorithmES384,
				cose.HeaderLabelKeyID:     env.KID,
			},
		},
		Payload:   p.payload,
		Signature: p.signature,
	}
	if err := msg.Verify(nil, entry.verifier); err != nil {
		return nil, refuse(ReasonBadSignature, "signature does not verify")
	}

	h := &env.Message.Header
	key := &entry.key
	sent := h.SentTime()
	switch {
	case key.Region != h.Src:
		return nil, refuse(ReasonKIDWrongRegion, "kid belongs to region "+key.Region+", not src "+h.Src)
	case sent.Before(key.NotBefore) || sent.After(key.NotAfter):
		return nil, refuse(ReasonKIDNotValid, "kid not valid at sent_at")
	case h.Partition != opts.Bundle.partition:
		return nil, refuse(ReasonWrongPartition, "partition "+h.Partition+", want "+opts.Bundle.partition)
	case !opts.Bundle.HasRegion(h.Dst):
		return nil, refuse(ReasonUnknownRegion, "dst "+h.Dst+" not in the partition")
	case h.Src == h.Dst:
		return nil, refuse(ReasonReflected, "src and dst are both "+h.Src)
	case opts.Receiver != "" && h.Dst != opts.Receiver:
		return nil, refuse(ReasonWrongDst, "dst "+h.Dst+", receiver is "+opts.Receiver)
	case opts.Now.After(h.ExpiryTime().Add(skew)):
		return nil, refuse(ReasonExpired, "expires_at has passed")
	case sent.After(opts.Now.Add(skew)):
		return nil, refuse(ReasonFromFuture, "sent_at is in the future")
	case opts.MaxLifecycleLifetime > 0 && Lifecycle(h.Type) &&
		h.ExpiresAt-h.SentAt > opts.MaxLifecycleLifetime.Milliseconds():
		return nil, refuse(ReasonLifetime, "expires_at − sent_at exceeds "+opts.MaxLifecycleLifetime.String()+", what the receiver's replay window covers")
	case opts.Subject != "" &&
		opts.Subject != OutboxSubject(h.Src, h.Dst, h.Type) &&
		opts.Subject != InboxSubject(h.Dst, h.Src, h.Type):
		return nil, refuse(ReasonSubject, "subject does not match src, dst and type")
	}
	return env, nil
}
