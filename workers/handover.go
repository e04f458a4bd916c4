package workers

import (
	"bytes"
	"context"
	"slices"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/internal/repl"
	"github.com/mrkrepl/mrkrepl/messages"
)

// This file is the change of primary region, a signed hand-over:
//
//	old primary A                      new primary B
//	UPDATING ──primary.handover──▶ onHandover: PRIMARY, UPDATING
//	onAccept ◀──primary.accept───
//	REPLICA of B ──key.status──▶ onStatus: ENABLED (hand-over done)
//	A tells the other replicas (key.sync with primary B): a replica takes a
//	new primary only from the one it has.
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
	key, err := w.updateKey(ctx, k.KeyID, func(k *repl.Key) error {
		if err := w.canChangeShared(k); err != nil {
			return err
		}
		if err := w.handoverReady(ctx, k, target); err != nil {
			return err
		}
		r, _ := k.Replica(target)
		r.State, r.UpdatedAt = repl.ReplicaUpdating, now
		k.SetReplica(r)
		k.KeyState, k.PendingPrimary = repl.KeyUpdating, target
		k.Epoch++
		k.HandoverID, k.HandoverSentAt = messages.NewID(), now
		k.UpdatedAt = now
		return nil
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

// handoverReady checks that target can take k over now: it holds every
// version, no version is staged, and no other replica is still being
// created or failed (the new primary must know every replica's versions).
func (w *Worker) handoverReady(ctx context.Context, k *repl.Key, target string) error {
	r, ok := k.Replica(target)
	if !ok || !k.HoldsAny(target) {
		return badRequest("key %s has no replica in %s; replicate it there first", k.KeyID, target)
	}
	if r.State != repl.ReplicaEnabled {
		return conflict("the replica of key %s in %s is %s", k.KeyID, target, r.State)
	}
	if s := k.Staged(); s != 0 {
		return conflict("key %s: version %d is staged; wait until it is current", k.KeyID, s)
	}
	if k.Reserved != 0 && w.cfg.Now().Sub(k.ReservedAt) < reservationTimeout {
		return conflict("key %s is being rotated; wait until the new version is staged and current", k.KeyID)
	}
	for _, o := range k.Replicas {
		if k.LeftBehind(o) {
			continue // failed before it held anything: left behind
		}
		if o.State == repl.ReplicaCreating || o.State == repl.ReplicaFailed || !k.Complete(o.Region) {
			return conflict("the replica of key %s in %s is %s; wait for it or delete it first", k.KeyID, o.Region, o.State)
		}
		if w.activeRun(ctx, o) != nil {
			return conflict("a replication of key %s to %s is in flight; wait for it", k.KeyID, o.Region)
		}
	}
	return nil
}

func (w *Worker) sendHandover(ctx context.Context, k *repl.Key) error {
	replicas := []string{w.cfg.Region}
	for _, r := range k.Replicas {
		if r.Region != k.PendingPrimary && !k.LeftBehind(r) {
			replicas = append(replicas, r.Region)
		}
	}
	slices.Sort(replicas)
	m := w.newMessage(messages.TypeHandover, k.HandoverID, k.PendingPrimary)
	m.Handover = &messages.Handover{
		KeyID: k.KeyID, Epoch: k.Epoch, CurrentVersion: k.CurrentVersion, Versions: slices.Clone(k.Versions),
		Replicas: replicas, Description: k.Description,
	}
	raw, _, err := w.sign(m)
	if err != nil {
		return err
	}
	// Remember it before it leaves: the accept must name one of these.
	_, err = w.updateKey(ctx, k.KeyID, func(k *repl.Key) error {
		if k.HandoverID != m.ReplicationID {
			return errNoChange
		}
		k.HandoverDigests = append(k.HandoverDigests, messages.Digest(raw))
		if n := len(k.HandoverDigests); n > maxHandoverDigests {
			k.HandoverDigests = k.HandoverDigests[n-maxHandoverDigests:]
		}
		return nil
	})
	if err != nil {
		return err
	}
	return w.publishSigned(ctx, m, raw)
}

// maxHandoverDigests bounds the hand-overs remembered (one is sent per
// MessageTTL while the new primary does not answer; an accept answers one
// that is still valid, so a few suffice).
const maxHandoverDigests = 8

// onHandover (new primary): take the key over and accept.
func (w *Worker) onHandover(ctx context.Context, env *messages.Envelope) error {
	m := &env.Message
	h := m.Handover
	k, err := w.loadKey(ctx, h.KeyID)
	if err != nil {
		return refuse(reasonStateMismatch, "hand-over of key %s, which has no replica in %s", h.KeyID, w.cfg.Region)
	}
	if k.Role == repl.Primary && k.Epoch >= h.Epoch && k.HandoverID == m.ReplicationID {
		// Taken over already (the accept was lost): accept again.
		if err := w.sendAccept(ctx, k, env); err != nil {
			return err
		}
		return errDuplicate
	}
	if k.Role != repl.ReplicaRole || k.PrimaryRegion != m.Src {
		return refuse(reasonNotPrimary, "hand-over of key %s from %s; its primary is %s", h.KeyID, m.Src, k.PrimaryRegion)
	}
	if k.KeyState == repl.KeyPendingDeletion {
		// Its status told the old primary, which calls the hand-over off.
		return refuse(reasonStateMismatch, "hand-over of key %s, which is pending deletion in %s", h.KeyID, w.cfg.Region)
	}
	if h.Epoch <= k.Epoch {
		return refuse(reasonStateMismatch, "hand-over of key %s at epoch %d; this replica holds epoch %d", h.KeyID, h.Epoch, k.Epoch)
	}
	for _, v := range h.Versions {
		if !slices.Contains(k.Versions, v) {
			return refuse(reasonStateMismatch, "hand-over of key %s: version %d is not held in %s", h.KeyID, v, w.cfg.Region)
		}
	}
	if err := w.markKeyPending(ctx, h.KeyID); err != nil {
		return err
	}
	now := w.cfg.Now().UTC()
	key, err := w.updateKey(ctx, h.KeyID, func(k *repl.Key) error {
		if k.Role != repl.ReplicaRole || k.PrimaryRegion != m.Src || h.Epoch <= k.Epoch || k.KeyState != repl.KeyEnabled {
			return refuse(reasonStateMismatch, "key %s changed meanwhile", h.KeyID)
		}
		holding := append(slices.Clone(h.Replicas), w.cfg.Region)
		slices.Sort(holding)
		k.VersionDetails = repl.TakeOverDetails(k.VersionDates, h.Versions, h.CurrentVersion, holding, now)
		k.VersionDates = nil
		k.Replicas = nil
		k.SyncSent = map[string]repl.SyncSent{}
		for _, r := range h.Replicas {
			state := repl.ReplicaEnabled
			if r == m.Src {
				state = repl.ReplicaUpdating // until it confirms being a replica
			}
			k.Replicas = append(k.Replicas, repl.Replica{Region: r, State: state, UpdatedAt: now})
			// Replicas hear of this region from the old primary first;
			// resend only if they do not report within MessageTTL.
			k.SyncSent[r] = repl.SyncSent{Epoch: h.Epoch, At: now}
		}
		k.Role, k.PrimaryRegion, k.KeyState = repl.Primary, w.cfg.Region, repl.KeyUpdating
		k.Epoch, k.CurrentVersion, k.Description = h.Epoch, h.CurrentVersion, h.Description
		k.HandoverID = m.ReplicationID
		k.StatusSeq, k.StatusAcked, k.Announce = 0, 0, nil
		k.UpdatedAt = now
		return nil
	})
	if err != nil {
		return err
	}
	w.event(ctx, api.Event{Type: api.EventPrimaryUpdateStarted, KeyID: key.KeyID, Peer: m.Src, Regions: []string{m.Src, w.cfg.Region}})
	return w.sendAccept(ctx, key, env)
}

func (w *Worker) sendAccept(ctx context.Context, k *repl.Key, handover *messages.Envelope) error {
	m := w.newMessage(messages.TypeAccept, handover.Message.ReplicationID, handover.Message.Src)
	m.Accept = &messages.Accept{HandoverDigest: handover.Digest, KeyID: k.KeyID, Epoch: handover.Message.Handover.Epoch}
	return w.sendSigned(ctx, m)
}

// onAccept (old primary): become a replica of the new primary and tell the
// other replicas.
func (w *Worker) onAccept(ctx context.Context, env *messages.Envelope) error {
	m := &env.Message
	a := m.Accept
	k, err := w.loadKey(ctx, a.KeyID)
	if err != nil {
		return refuse(reasonUnknownKey, "accept for key %s, unknown in %s", a.KeyID, w.cfg.Region)
	}
	if k.Role == repl.ReplicaRole && k.PrimaryRegion == m.Src && k.Epoch >= a.Epoch {
		return errDuplicate
	}
	if k.Role != repl.Primary || k.KeyState != repl.KeyUpdating || k.PendingPrimary != m.Src ||
		k.HandoverID != m.ReplicationID || k.Epoch != a.Epoch ||
		!slices.ContainsFunc(k.HandoverDigests, func(d []byte) bool { return bytes.Equal(d, a.HandoverDigest) }) {
		return refuse(reasonStateMismatch, "accept from %s does not answer the hand-over of key %s in progress", m.Src, a.KeyID)
	}
	if err := w.markKeyPending(ctx, a.KeyID); err != nil {
		return err
	}
	now := w.cfg.Now().UTC()
	key, err := w.updateKey(ctx, a.KeyID, func(k *repl.Key) error {
		if k.Role != repl.Primary || k.HandoverID != m.ReplicationID {
			return refuse(reasonStateMismatch, "key %s changed meanwhile", a.KeyID)
		}
		k.Announce = nil
		for _, r := range k.Replicas {
			if r.Region != m.Src && !k.LeftBehind(r) {
				k.Announce = append(k.Announce, r.Region)
			}
		}
		k.AnnounceEpoch, k.AnnounceSentAt = k.Epoch, now
		k.Role, k.PrimaryRegion, k.KeyState, k.PendingPrimary = repl.ReplicaRole, m.Src, repl.KeyEnabled, ""
		k.KeepDates()
		k.Replicas, k.VersionDetails, k.SyncSent, k.HandoverID, k.HandoverDigests = nil, nil, nil, "", nil
		k.StatusSeq++ // tell the new primary this region is its replica now
		k.StatusSentAt = now
		k.UpdatedAt = now
		return nil
	})
	if err != nil {
		return err
	}
	w.event(ctx, api.Event{Type: api.EventPrimaryUpdated, KeyID: key.KeyID, Peer: m.Src, Regions: []string{w.cfg.Region, m.Src}})
	w.log.Info("primary handed over", "key_id", key.KeyID, "new_primary", m.Src)
	if err := w.sendStatus(ctx, key, m.Src, nil); err != nil {
		w.log.Warn("status not sent to the new primary; the sweeper will", "key_id", key.KeyID, "err", err)
	}
	w.announce(ctx, key)
	return nil
}

// announce tells the replicas in k.Announce who the new primary is.
func (w *Worker) announce(ctx context.Context, k *repl.Key) {
	for _, dst := range k.Announce {
		if err := w.sendSync(ctx, k, dst, 0); err != nil {
			w.log.Warn("new primary not announced; the sweeper will", "key_id", k.KeyID, "dst", dst, "err", err)
		}
	}
}
