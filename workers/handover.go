package workers

import (
	"context"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/internal/repl"
	"github.com/mrkrepl/mrkrepl/messages"
)

// This file is the shell of the change of primary region, a signed
// hand-over (the diagram and the decisions are in internal/repl/handover.go:
// CanChangeShared, HandoverReady, BeginHandover, CheckHandover, TakeOver,
// CheckAccept, BecomeReplica).

func (w *Worker) apiUpdatePrimaryRegion(ctx context.Context, data []byte) (any, error) {
	var req api.UpdatePrimaryRegionRequest
	if err := decodeKeyRequest(data, &req, &req.KeyID); err != nil {
		return nil, err
	}
	if !w.bundle().HasRegion(req.PrimaryRegion) {
		return nil, badRequest("region %q is not in partition %q", req.PrimaryRegion, w.bundle().Partition())
	}
	k, err := w.loadKey(ctx, req.KeyID)
	if err != nil {
		return nil, err
	}
	if err := w.canChangeShared(k); err != nil {
		return nil, err
	}
	target := req.PrimaryRegion
	if target == w.cfg.Region {
		return nil, badRequest("key %s is already primary in %s", k.KeyID, target)
	}
	if err := w.handoverReady(ctx, k, target); err != nil {
		return nil, err
	}
	if err := w.markKeyPending(ctx, k.KeyID); err != nil {
		return nil, err
	}
	now := w.cfg.Now().UTC()
	id := messages.NewID()
	key, err := w.updateKey(ctx, k.KeyID, func(k *repl.Key) (bool, error) {
		if err := w.canChangeShared(k); err != nil {
			return false, err
		}
		if err := w.handoverReady(ctx, k, target); err != nil {
			return false, err
		}
		repl.BeginHandover(k, target, id, now)
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	w.event(ctx, api.Event{Type: api.EventPrimaryUpdateStarted, KeyID: key.KeyID, Peer: target, Regions: []string{w.cfg.Region, target}})
	if err := w.sendHandover(ctx, key); err != nil {
		w.log.Warn("hand-over not sent; the sweeper will", "key_id", key.KeyID, "err", err)
	}
	return key.Public(), nil
}

// canChangeShared is repl.CanChangeShared, as an error.
func (w *Worker) canChangeShared(k *repl.Key) error {
	if e := repl.CanChangeShared(k, w.core()); e != nil {
		return e
	}
	return nil
}

// handoverReady is repl.HandoverReady, with the replicas whose run is in
// flight looked up.
func (w *Worker) handoverReady(ctx context.Context, k *repl.Key, target string) error {
	var inFlight []string
	for _, o := range k.Replicas {
		if !k.LeftBehind(o) && w.activeRun(ctx, o) != nil {
			inFlight = append(inFlight, o.Region)
		}
	}
	if e := repl.HandoverReady(k, target, inFlight, w.cfg.Now()); e != nil {
		return e
	}
	return nil
}

// sendHandover signs the hand-over of k, remembers its digest (the accept
// must name one of these) and only then publishes it.
func (w *Worker) sendHandover(ctx context.Context, k *repl.Key) error {
	m := w.newMessage(messages.TypeHandover, k.HandoverID, k.PendingPrimary)
	m.Handover = repl.HandoverOf(k, w.core())
	raw, _, err := w.sign(m)
	if err != nil {
		return err
	}
	_, err = w.updateKey(ctx, k.KeyID, func(k *repl.Key) (bool, error) {
		return repl.RecordHandover(k, m.ReplicationID, messages.Digest(raw)), nil
	})
	if err != nil {
		return err
	}
	return w.publishSigned(ctx, m, raw)
}

// onHandover (new primary): take the key over and accept.
func (w *Worker) onHandover(ctx context.Context, env *messages.Envelope) (outcome, error) {
	m := &env.Message
	h := m.Handover
	k, err := w.loadKey(ctx, h.KeyID)
	if err != nil {
		k = nil
	}
	switch v, ref := repl.CheckHandover(k, env, w.core()); v {
	case repl.HandoverRefused:
		return accepted, ref
	case repl.HandoverAgain:
		// Taken over already (the accept was lost): accept again.
		if err := w.sendAccept(ctx, k, env); err != nil {
			return accepted, err
		}
		return duplicate, nil
	}
	if err := w.markKeyPending(ctx, h.KeyID); err != nil {
		return accepted, err
	}
	now := w.cfg.Now().UTC()
	key, err := w.updateKey(ctx, h.KeyID, func(k *repl.Key) (bool, error) {
		if ref := repl.TakeOver(k, env, w.core(), now); ref != nil {
			return false, ref
		}
		return true, nil
	})
	if err != nil {
		return accepted, err
	}
	w.event(ctx, api.Event{Type: api.EventPrimaryUpdateStarted, KeyID: key.KeyID, Peer: m.Src, Regions: []string{m.Src, w.cfg.Region}})
	return accepted, w.sendAccept(ctx, key, env)
}

func (w *Worker) sendAccept(ctx context.Context, k *repl.Key, handover *messages.Envelope) error {
	m := w.newMessage(messages.TypeAccept, handover.Message.ReplicationID, handover.Message.Src)
	m.Accept = repl.AcceptOf(k, handover)
	return w.sendSigned(ctx, m)
}

// onAccept (old primary): become a replica of the new primary and tell the
// other replicas.
func (w *Worker) onAccept(ctx context.Context, env *messages.Envelope) (outcome, error) {
	m := &env.Message
	a := m.Accept
	k, err := w.loadKey(ctx, a.KeyID)
	if err != nil {
		return accepted, refuse(reasonUnknownKey, "accept for key %s, unknown in %s", a.KeyID, w.cfg.Region)
	}
	switch v, ref := repl.CheckAccept(k, env); v {
	case repl.AcceptDuplicate:
		return duplicate, nil
	case repl.AcceptRefused:
		return accepted, ref
	}
	if err := w.markKeyPending(ctx, a.KeyID); err != nil {
		return accepted, err
	}
	now := w.cfg.Now().UTC()
	key, err := w.updateKey(ctx, a.KeyID, func(k *repl.Key) (bool, error) {
		if ref := repl.BecomeReplica(k, m.Src, m.ReplicationID, now); ref != nil {
			return false, ref
		}
		return true, nil
	})
	if err != nil {
		return accepted, err
	}
	w.event(ctx, api.Event{Type: api.EventPrimaryUpdated, KeyID: key.KeyID, Peer: m.Src, Regions: []string{w.cfg.Region, m.Src}})
	w.log.Info("primary handed over", "key_id", key.KeyID, "new_primary", m.Src)
	if err := w.sendStatus(ctx, key, m.Src, nil); err != nil {
		w.log.Warn("status not sent to the new primary; the sweeper will", "key_id", key.KeyID, "err", err)
	}
	w.announce(ctx, key)
	return accepted, nil
}

// announce tells the replicas in k.Announce who the new primary is.
func (w *Worker) announce(ctx context.Context, k *repl.Key) {
	for _, dst := range k.Announce {
		if err := w.sendSync(ctx, k, dst, 0); err != nil {
			w.log.Warn("new primary not announced; the sweeper will", "key_id", k.KeyID, "dst", dst, "err", err)
		}
	}
}
