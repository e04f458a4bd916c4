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

// refusal is a message that will never be acted on: it is dead-lettered
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

// handleInbox verifies one inbox message and runs the state machine on it.
// Every outcome ends in an explicit ack decision.
func (w *Worker) handleInbox(ctx context.Context, msg jetstream.Msg) {
	typ := "unknown"
	err := w.processInbox(ctx, msg, &typ)
	var ref *refusal
	switch {
	case err == nil:
		w.met.received.WithLabelValues(typ, "accepted").Inc()
		w.ack(ctx, msg)
	case errors.Is(err, errDuplicate):
		w.met.received.WithLabelValues(typ, "duplicate").Inc()
		w.ack(ctx, msg)
	case errors.As(err, &ref):
		w.met.received.WithLabelValues(typ, "refused").Inc()
		w.met.refused.WithLabelValues(ref.Reason).Inc()
		w.log.Warn("inbox message refused", "subject", msg.Subject(), "reason", ref.Reason, "detail", ref.Detail)
		if err := w.deadLetter(ctx, msg, ref); err != nil {
			w.log.Error("dead-letter failed; will retry", "subject", msg.Subject(), "err", err)
			_ = msg.NakWithDelay(time.Second)
			return
		}
		w.event(ctx, api.Event{Type: api.EventMessageRefused, Reason: ref.Reason})
		_ = msg.TermWithReason(ref.Reason)
	default:
		w.met.received.WithLabelValues(typ, "retry").Inc()
		w.log.Warn("inbox message failed; will retry", "subject", msg.Subject(), "err", err)
		_ = msg.NakWithDelay(retryDelay(msg))
	}
}

// errDuplicate marks a message already handled: the stored reply was
// re-published and the message can be acked.
var errDuplicate = errors.New("duplicate")

func (w *Worker) processInbox(ctx context.Context, msg jetstream.Msg, typ *string) error {
	env, err := messages.Verify(msg.Data(), messages.VerifyOptions{
		Bundle:   w.bundle(),
		Now:      w.cfg.Now(),
		Receiver: w.cfg.Region,
		Subject:  msg.Subject(),
		Skew:     w.cfg.ClockSkew,
	})
	if err != nil {
		var ve *messages.VerifyError
		if errors.As(err, &ve) {
			return &refusal{Reason: string(ve.Reason), Detail: ve.Detail}
		}
		return &refusal{Reason: string(messages.ReasonMalformed), Detail: err.Error()}
	}
	*typ = string(env.Message.Type)
	// Audit events caused by this message name its signer's region.
	ctx = withActor(ctx, "region:"+env.Message.Src)
	// Replay cache: a msg_id is accepted once; the same bytes again are a
	// redelivery (handled idempotently below), other bytes are refused.
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
	return refuse(string(messages.ReasonMalformed), "unexpected type %q", env.Message.Type)
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

// deadLetter records a refused message on the region's DLQ with the reason.
func (w *Worker) deadLetter(ctx context.Context, msg jetstream.Msg, ref *refusal) error {
	return layout.DeadLetter(ctx, w.js, w.cfg.Region, "worker", msg, ref.Reason, ref.Detail)
}
