package main

import (
	"context"
	"flag"
	"fmt"
	"slices"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/messages"
)

// This file is "mrkrepl key replicate" and "key replication": starting a
// run and following it (--wait) through the worker's retries.

func keyReplicate(ctx context.Context, k *keyCmd, fs *flag.FlagSet, args []string) error {
	to := fs.String("to", "", "the `region` to copy the key to (required)")
	token := fs.String("client-token", "", "make the request idempotent: repeating it with the same `token` (1 to 64 printable ASCII characters, remembered 24 hours) returns the same run, never a second one")
	wait := fs.Bool("wait", false, "wait until the replica holds every version or has failed, showing each run and change of state on stderr (a key with several versions is copied one version per run, the current one first); exit 1 if it fails or --wait-timeout passes")
	waitTimeout := fs.Duration("wait-timeout", 2*time.Minute, "with --wait: stop waiting after this long (the replication goes on)")
	policyFile := fs.String("policy", "", "the replica's policy in --to, a JSON document read from `FILE` (- for stdin; default: the key's policy in --region)")
	pos, err := k.flags.parse(fs, args, "KEY_ID")
	if err != nil {
		return err
	}
	policy, err := readPolicy(*policyFile)
	if err != nil {
		return err
	}
	switch {
	case *to == "":
		return usageError(fs, "--to is required")
	case !messages.IsName(*to):
		return usageError(fs, "--to %q: not a region name (lowercase letters, digits and '-')", *to)
	case *waitTimeout <= 0:
		return usageError(fs, "--wait-timeout %s: want more than 0", *waitTimeout)
	}
	if err := k.connect(); err != nil {
		return err
	}
	run, err := do(ctx, k, func(ctx context.Context) (*api.Replication, error) {
		return k.c.ReplicateKeyRequest(ctx, api.ReplicateKeyRequest{KeyID: pos[0], ReplicaRegion: *to, ClientToken: *token, Policy: policy})
	})
	if err != nil {
		return err
	}
	if !*wait {
		return k.printReplication(run)
	}
	start := time.Now()
	progress := func(r *api.Replication) {
		line := fmt.Sprintf("%6.2fs  %-13s  replication %s (%s → %s, version %d)", time.Since(start).Seconds(), r.State, r.ReplicationID, k.flags.region, r.Peer, r.Version)
		if r.Reason != "" {
			line += ": " + r.Reason
		}
		fmt.Fprintln(k.stderr, line)
	}
	final, werr := k.waitReplica(ctx, *waitTimeout, run, progress)
	if final != nil && (werr == nil || final.State == api.StateFailed) {
		if err := k.printReplication(final); err != nil {
			return err
		}
	}
	return werr
}

// waitReplica polls a source run until the replica it makes is usable or
// has failed for good. When a run ends it asks the primary about the
// replica: after a COMPLETED run of a key with several versions the
// primary starts the run for the next version, and it replaces a FAILED
// run by a fresh one (up to its attempts limit); waitReplica follows
// either. progress sees every run and change of state.
func (k *keyCmd) waitReplica(ctx context.Context, timeout time.Duration, run *api.Replication, progress func(*api.Replication)) (*api.Replication, error) {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	stillWaiting := func(err error) error {
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("interrupted while replication %s was %s; it goes on (mrkrepl key replication %s --region %s)", run.ReplicationID, run.State, run.ReplicationID, k.flags.region)
		case wctx.Err() != nil:
			return fmt.Errorf("replication %s to %s still %s after %s (--wait-timeout); it goes on (mrkrepl key replication %s --region %s)", run.ReplicationID, run.Peer, run.State, timeout, run.ReplicationID, k.flags.region)
		}
		return err
	}
	progress(run)
	delay := 10 * time.Millisecond
	for {
		switch run.State {
		case api.StateCompleted, api.StateFailed:
			key, err := do(wctx, k, func(ctx context.Context) (*api.Key, error) { return k.c.DescribeKey(ctx, run.KeyID) })
			if err != nil {
				return run, stillWaiting(err)
			}
			decide := afterFailure
			if run.State == api.StateCompleted {
				decide = afterCompletion
			}
			switch outcome, next, reason := decide(run, key); outcome {
			case replicaReady:
				return run, nil
			case gaveUp:
				return run, fmt.Errorf("replication %s to %s FAILED: %s", run.ReplicationID, run.Peer, reason)
			case followRun:
				r, err := do(wctx, k, func(ctx context.Context) (*api.Replication, error) { return k.c.DescribeReplication(ctx, next) })
				if err != nil {
					return run, stillWaiting(err)
				}
				run = r
				progress(run)
				continue
			}
		}
		select {
		case <-wctx.Done():
			return run, stillWaiting(wctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 500*time.Millisecond)
		r, err := do(wctx, k, func(ctx context.Context) (*api.Replication, error) {
			return k.c.DescribeReplication(ctx, run.ReplicationID)
		})
		if err != nil {
			return run, stillWaiting(err)
		}
		if r.State != run.State {
			progress(r)
		}
		run = r
	}
}

// What waiting does after a run has ended FAILED.
type failureOutcome int

const (
	keepPolling  failureOutcome = iota // the primary has not decided yet (or a late receipt is completing the run)
	followRun                          // the primary started another run for the replica
	gaveUp                             // the replica is FAILED: no more runs
	replicaReady                       // the replica holds every version
)

// afterCompletion decides from the primary's record of the replica what to
// do once run has COMPLETED (pure, for tests): a new replica of a key with
// several versions gets one run per version, so the replica may still be
// CREATING, with a later run.
func afterCompletion(run *api.Replication, key *api.Key) (outcome failureOutcome, next, reason string) {
	i := slices.IndexFunc(key.Replicas, func(r api.Replica) bool { return r.Region == run.Peer })
	if i < 0 {
		return replicaReady, "", "" // nothing more to follow (the replica was dropped since)
	}
	r := key.Replicas[i]
	switch {
	case r.ReplicationID != "" && r.ReplicationID != run.ReplicationID:
		return followRun, r.ReplicationID, "" // show the later run, even if it is over already
	case r.State != api.ReplicaCreating && r.State != api.ReplicaFailed:
		return replicaReady, "", ""
	case r.State == api.ReplicaFailed:
		return gaveUp, "", r.Reason
	}
	return keepPolling, "", ""
}

// afterFailure decides from the primary's record of the replica what to do
// once run has ended FAILED (pure, for tests).
func afterFailure(run *api.Replication, key *api.Key) (outcome failureOutcome, next, reason string) {
	i := slices.IndexFunc(key.Replicas, func(r api.Replica) bool { return r.Region == run.Peer })
	if i < 0 {
		return gaveUp, "", run.Reason
	}
	r := key.Replicas[i]
	switch {
	case r.ReplicationID != "" && r.ReplicationID != run.ReplicationID:
		return followRun, r.ReplicationID, ""
	case r.State == api.ReplicaFailed:
		if r.Reason != "" {
			return gaveUp, "", r.Reason
		}
		return gaveUp, "", run.Reason
	}
	return keepPolling, "", ""
}

func keyReplication(ctx context.Context, k *keyCmd, fs *flag.FlagSet, args []string) error {
	pos, err := k.flags.parse(fs, args, "REPLICATION_ID")
	if err != nil {
		return err
	}
	if err := k.connect(); err != nil {
		return err
	}
	run, err := do(ctx, k, func(ctx context.Context) (*api.Replication, error) { return k.c.DescribeReplication(ctx, pos[0]) })
	if err != nil {
		return err
	}
	return k.printReplication(run)
}
