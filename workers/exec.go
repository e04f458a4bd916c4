package workers

import (
	"context"
	"errors"
	"fmt"

	"github.com/mrkrepl/mrkrepl/internal/repl"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/nats-io/nats.go/jetstream"
)

// This file is where the shell orders the effects the core asks for. The
// core (internal/repl) decides; the handlers in source.go, destination.go,
// sync.go, handover.go, deletion.go and sweep.go perform, and these rules
// hold for all of them:
//
//  1. Pending entry before the record it stands for. A run's entry in the
//     PENDING index is written before the run is stored (startRun:
//     markPendingAsync, received before createRun; onInit: claimRun, which
//     is also the claim on the init), and a key's "lc." entry before a
//     lifecycle change (markKeyPending): the sweeper finds every run and
//     duty that exists, and removes an entry only after its work is done.
//  2. HSM result, then seal, then write. A message whose content depends
//     on an HSM operation (the RAKB in the offer, the wrapped key in the
//     material, the key confirmation in the receipt) is sealed after it,
//     with the RSK valid at its sent_at; the record that stores the sealed
//     bytes (Run.LastSent) is written after that (sealRun, then
//     createRun or writeRun).
//  3. The replica's key record before its run says COMPLETED: a
//     destination stores the replica (storeReplica) before its run and
//     before the receipt, so a receipt never announces a key that no
//     record holds. A source stores its run before it changes the key
//     (AttachRun, RecordReceipt).
//  4. Write before publish. A run's reply leaves only after the record
//     holding it is written with compare-and-set (writeAndSend); a crash in
//     between is repaired by the redelivery, which Match finds a
//     Redelivery and answerRun re-publishes (same Nats-Msg-Id, de-duplicated
//     by the outbox). Lifecycle messages likewise follow the write of the
//     state they report.
//  5. A lost compare-and-set is decided again: the shell reads the record
//     again and calls the same core function on it (updateJSON for keys;
//     writeRun re-runs Match for runs), never a rule of its own.
//  6. Events after the write they report (finish, event).

// outcome is what became of an inbox message that was not refused and did
// not fail: acted on, or a duplicate of one acted on (both are acked).
type outcome int

const (
	accepted outcome = iota
	duplicate
)

// core is the core's configuration for this region now (the partition is
// the bundle's in force).
func (w *Worker) core() repl.Config {
	return repl.Config{
		Region: w.cfg.Region, Partition: w.bundle().Partition(),
		MessageTTL: w.cfg.MessageTTL, ReplicationTTL: w.cfg.ReplicationTTL,
		RunTimeout: w.cfg.RunTimeout, MaxAttempts: w.cfg.MaxAttempts,
	}
}

// sealRun gives m a msg_id, signs it and records it in run as the run's
// last message (repl.Run.Record): rule 2.
func (w *Worker) sealRun(run *repl.Run, m *messages.Message) error {
	if m.MsgID == "" {
		m.MsgID = messages.NewID()
	}
	raw, kid, err := w.sign(m)
	if err != nil {
		return err
	}
	run.Record(m, repl.Sealed{Raw: raw, Digest: messages.Digest(raw), KID: kid})
	return nil
}

// answerRun acts on a verdict that is not Fresh (or on err): a Redelivery is
// answered with the run's stored reply (a duplicate), a refusal is
// returned for the inbox to dead-letter.
func (w *Worker) answerRun(ctx context.Context, run *repl.Run, v repl.Verdict, err error) (outcome, error) {
	switch {
	case err != nil:
		return accepted, err
	case v.Kind == repl.Redelivery:
		if err := w.publish(ctx, run); err != nil {
			return accepted, err
		}
		return duplicate, nil
	case v.Kind == repl.Refused:
		return accepted, v.Refusal
	}
	return accepted, fmt.Errorf("answer: verdict %s", v.Kind)
}

// writeRun writes next over the revision rev that env's run was read at
// (rule 5: a lost compare-and-set reads the run again and matches env on
// it; if another worker consumed the same message, env is a duplicate).
func (w *Worker) writeRun(ctx context.Context, env *messages.Envelope, next *repl.Run, rev uint64) (outcome, error) {
	err := w.casRun(ctx, next, rev)
	if err == nil {
		return accepted, nil
	}
	if errors.Is(err, jetstream.ErrKeyExists) {
		if other, _, gerr := getJSON[repl.Run](ctx, w.res.Repl, next.ID); gerr == nil {
			if v := repl.Match(other, env); v.Kind == repl.Redelivery {
				return w.answerRun(ctx, other, v, nil)
			}
		}
	}
	return accepted, fmt.Errorf("store replication %s: %w", next.ID, err)
}

// writeAndSend is writeRun, then the publish of the reply it stored
// (rule 4).
func (w *Worker) writeAndSend(ctx context.Context, env *messages.Envelope, next *repl.Run, rev uint64) (outcome, error) {
	if o, err := w.writeRun(ctx, env, next, rev); err != nil || o == duplicate {
		return o, err
	}
	return accepted, w.publish(ctx, next)
}
