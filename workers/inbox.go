package workers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/nats-io/nats.go/jetstream"
)

// handleInbox verifies one inbox message and runs the state machine on it.
// Every outcome ends in an explicit ack decision.
func (w *Worker) handleInbox(ctx context.Context, msg jetstream.Msg) {
	typ := "unknown"
	o, err := w.processInbox(ctx, msg, &typ)
	var ref *refusal
	switch {
	case err == nil && o == accepted:
		w.met.received.WithLabelValues(typ, "accepted").Inc()
		w.ack(ctx, msg)
	case err == nil:
		w.met.received.WithLabelValues(typ, "duplicate").Inc()
		w.ack(ctx, msg)
	case errors.As(err, &ref):
		w.refuseInbox(ctx, msg, typ, ref)
	case layout.LastDelivery(msg, w.cfg.Layout.MaxDeliverOr()):
		// The server will not deliver it again: give it up, recorded.
		w.refuseInbox(ctx, msg, typ, &refusal{Reason: layout.ReasonMaxDeliver, Detail: err.Error()})
	default:
		w.met.received.WithLabelValues(typ, "retry").Inc()
		w.log.Warn("inbox message failed; will retry", "subject", msg.Subject(), "err", err)
		_ = msg.NakWithDelay(retryDelay(msg))
	}
}

// refuseInbox dead-letters a refused inbox message and terminates it. The
// refusal is counted, logged and made an event once: a redelivery of the
// same delivery (its Term lost, or the dead letter published but not
// confirmed) finds its dead letter already there (layout.DeadLetter).
func (w *Worker) refuseInbox(ctx context.Context, msg jetstream.Msg, typ string, ref *refusal) {
	first, err := w.deadLetter(ctx, msg, ref)
	if err != nil {
		w.log.Error("dead-letter failed; will retry", "subject", msg.Subject(), "err", err)
		_ = msg.NakWithDelay(time.Second)
		return
	}
	if first {
		w.met.received.WithLabelValues(typ, "refused").Inc()
		w.met.refused.WithLabelValues(ref.Reason).Inc()
		w.log.Warn("inbox message refused", "subject", msg.Subject(), "reason", ref.Reason, "detail", ref.Detail)
		w.event(ctx, api.Event{Type: api.EventMessageRefused, Reason: ref.Reason})
	}
	_ = msg.TermWithReason(ref.Reason)
}

func (w *Worker) processInbox(ctx context.Context, msg jetstream.Msg, typ *string) (outcome, error) {
	env, err := messages.Verify(msg.Data(), messages.VerifyOptions{
		Bundle:   w.bundle(),
		Now:      w.cfg.Now(),
		Receiver: w.cfg.Region,
		Subject:  msg.Subject(),
		Skew:     w.cfg.ClockSkew,
		// A lifecycle message must not outlive the replay cache's memory.
		MaxLifecycleLifetime: layout.LifecycleMaxLifetime(w.cfg.ClockSkew),
	})
	if err != nil {
		var ve *messages.VerifyError
		if errors.As(err, &ve) {
			return accepted, &refusal{Reason: string(ve.Reason), Detail: ve.Detail}
		}
		return accepted, &refusal{Reason: string(messages.ReasonMalformed), Detail: err.Error()}
	}
	*typ = string(env.Message.Type)
	// Audit events caused by this message name its signer's region.
	ctx = withActor(ctx, "region:"+env.Message.Src)
	// Replay check: a msg_id is accepted once; the same bytes again are a
	// redelivery (handled idempotently), other bytes are refused. The four
	// messages of a run are checked against the run record, which keeps
	// each accepted message's msg_id beside its digest (repl.Match, in
	// each run handler); the lifecycle messages against the replay cache.
	if !runMessage(env.Message.Type) {
		if err := w.checkReplayCache(ctx, env); err != nil {
			return accepted, err
		}
	}
	return w.handle(ctx, env)
}

// handle runs the state machine on a verified message.
func (w *Worker) handle(ctx context.Context, env *messages.Envelope) (outcome, error) {
	switch env.Message.Type {
	case messages.TypeInit:
		return w.onInit(ctx, env)
	case messages.TypeOffer:
		return w.onOffer(ctx, env)
	case messages.TypeMaterial:
		return w.onMaterial(ctx, env)
	case messages.TypeReceipt:
		return w.onReceipt(ctx, env)
	case messages.TypeSync:
		return w.onSync(ctx, env)
	case messages.TypeStatus:
		return w.onStatus(ctx, env)
	case messages.TypeHandover:
		return w.onHandover(ctx, env)
	case messages.TypeAccept:
		return w.onAccept(ctx, env)
	}
	return accepted, refuse(string(messages.ReasonMalformed), "unexpected type %q", env.Message.Type)
}

// runMessage reports whether t is one of the four messages of a run.
func runMessage(t messages.Type) bool {
	switch t {
	case messages.TypeInit, messages.TypeOffer, messages.TypeMaterial, messages.TypeReceipt:
		return true
	}
	return false
}

// checkReplayCache records a lifecycle message's msg_id with its digest in
// the replay cache (TTL layout.ReplayWindow) and refuses a msg_id seen
// before with other bytes.
func (w *Worker) checkReplayCache(ctx context.Context, env *messages.Envelope) error {
	if _, err := w.res.Replay.Create(ctx, env.Message.MsgID, env.Digest); err != nil {
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("replay cache: %w", err)
		}
		e, gerr := w.res.Replay.Get(ctx, env.Message.MsgID)
		if gerr != nil {
			return fmt.Errorf("replay cache: %w", gerr)
		}
		if !bytes.Equal(e.Value(), env.Digest) {
			return refuse(reasonReplayedMsgID, "msg_id %s seen before with other content", env.Message.MsgID)
		}
	}
	return nil
}

// ack acknowledges without waiting for the server's confirmation: every
// step is idempotent, so an ack that is lost only causes a redelivery that
// is answered as a duplicate (this saves a round trip per message).
func (w *Worker) ack(_ context.Context, msg jetstream.Msg) {
	if err := msg.Ack(); err != nil {
		w.log.Warn("ack failed; message will be redelivered and handled idempotently", "subject", msg.Subject(), "err", err)
	}
}

// retryDelay grows with the number of deliveries: 1s, 2s, 4s … capped at 30s.
func retryDelay(msg jetstream.Msg) time.Duration { return layout.RetryDelay(msg, time.Second, 5) }

// deadLetter records a refused message on the region's DLQ with the
// reason; first is false when this delivery's dead letter was there.
func (w *Worker) deadLetter(ctx context.Context, msg jetstream.Msg, ref *refusal) (first bool, err error) {
	return layout.DeadLetter(ctx, w.js, w.cfg.Region, "worker", msg, ref.Reason, ref.Detail)
}
