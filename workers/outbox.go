package workers

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/internal/repl"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// This file builds, seals and publishes what a region sends: a run's
// messages (stored in the run as its last message, see sealRun), lifecycle
// messages (sent fresh each time) and audit events.

// newMessage fills the header of a lifecycle message this region sends
// now (repl.Config.NewMessage), with a fresh msg_id.
func (w *Worker) newMessage(t messages.Type, replicationID, dst string) *messages.Message {
	m := w.core().NewMessage(t, replicationID, dst, w.cfg.Now())
	m.MsgID = messages.NewID()
	return m
}

// sign seals m with the region's RSK valid at m's sent_at (rskAt).
func (w *Worker) sign(m *messages.Message) (raw, kid []byte, err error) {
	signer, kid := w.rskAt(m.SentTime())
	err = w.hsmOp("sign", func() (err error) {
		raw, err = messages.Seal(m, signer)
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("seal %s: %w", m.Type, err)
	}
	return raw, kid, nil
}

// publish sends the run's last message to the outbox. Nats-Msg-Id is the
// message's SHA-256 (layout.MsgID): publishing the same bytes again is
// harmless.
func (w *Worker) publish(ctx context.Context, rec *repl.Run) error {
	if len(rec.LastSent) == 0 {
		return nil
	}
	msg := nats.NewMsg(rec.LastSentSubject)
	msg.Data = rec.LastSent
	if _, err := w.js.PublishMsg(ctx, msg, jetstream.WithMsgID(layout.MsgID(rec.LastSent))); err != nil {
		return fmt.Errorf("publish %s: %w", rec.LastSentSubject, err)
	}
	return nil
}

func (w *Worker) event(ctx context.Context, ev api.Event) {
	ev.Region = w.cfg.Region
	if ev.Actor == "" {
		ev.Actor = actorFrom(ctx)
	}
	if ev.Time.IsZero() {
		ev.Time = w.cfg.Now()
	}
	ev.Time = ev.Time.UTC()
	b, err := json.Marshal(ev)
	if err != nil {
		return
	}
	if _, err := w.js.Publish(ctx, layout.EventSubject(w.cfg.Region, ev.Type), b); err != nil {
		w.log.Warn("audit event not published", "event", ev.Type, "err", err)
	}
}

// sendSigned signs m and publishes it to the outbox (for lifecycle
// messages, which are not stored: a lost one is sent again, fresh).
func (w *Worker) sendSigned(ctx context.Context, m *messages.Message) error {
	raw, _, err := w.sign(m)
	if err != nil {
		return err
	}
	return w.publishSigned(ctx, m, raw)
}

// publishSigned publishes m, signed as raw, to the outbox.
func (w *Worker) publishSigned(ctx context.Context, m *messages.Message, raw []byte) error {
	msg := nats.NewMsg(messages.OutboxSubject(w.cfg.Region, m.Dst, m.Type))
	msg.Data = raw
	if _, err := w.js.PublishMsg(ctx, msg, jetstream.WithMsgID(layout.MsgID(raw))); err != nil {
		return fmt.Errorf("publish %s to %s: %w", m.Type, m.Dst, err)
	}
	return nil
}
