// Package netns is the network chaos suite: two regions, each a 3-node
// nats-server cluster and its workers in a network namespace of its own,
// and two proxies in a third, every part a separate process, joined by
// veth links. Faults come from a seeded schedule and are made with the
// kernel's tools (ip link set down, nftables DROP and random loss),
// toxiproxy (latency, bandwidth: this kernel has no netem) and kill -9.
//
// It needs root, ip (iproute2) and nft (nftables), and skips otherwise;
// MRKREPL_REQUIRE_NETNS=1 makes a skip a failure (CI).
//
//	go test ./e2e/netns -v                                   # short, as in CI
//	go test ./e2e/netns -v -netns.long -timeout 60m          # ≥ 1,000 replications
//	go test ./e2e/netns -v -netns.seed 1234                  # replay a schedule
package netns

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/nats-io/nats.go"
)

var (
	seedFlag = flag.Uint64("netns.seed", 0, "seed of the fault schedule (0: from the clock; the seed used is logged)")
	longFlag = flag.Bool("netns.long", false, "long mode: ≥ 1,000 replications, with a partition of a whole region and of a proxy's links")
)

// fault is one entry of the schedule: at offset at, do kind to target,
// and undo it after hold (kills: restart after hold).
type fault struct {
	at, hold time.Duration
	kind     string
	target   int // region, proxy or worker/server index, by kind
	node     int
	amount   int // loss percent, latency ms, bandwidth KB/s
}

func (f fault) String() string {
	s := fmt.Sprintf("+%v %s", f.at.Round(100*time.Millisecond), f.kind)
	switch f.kind {
	case "partition-region", "drop", "loss", "latency", "bandwidth":
		s += " " + regionNames[f.target]
	case "partition-proxy", "kill-proxy":
		s += fmt.Sprintf(" proxy-%d", f.target)
	case "kill-worker":
		s += fmt.Sprintf(" worker-%s-%d", regionNames[f.target], f.node)
	case "kill-server":
		s += fmt.Sprintf(" %s-n%d", regionNames[f.target], f.node)
	}
	switch f.kind {
	case "loss":
		s += fmt.Sprintf(" %d%%", f.amount)
	case "latency":
		s += fmt.Sprintf(" %dms", f.amount)
	case "bandwidth":
		s += fmt.Sprintf(" %dKB/s", f.amount)
	}
	return s + fmt.Sprintf(" for %v", f.hold.Round(100*time.Millisecond))
}

// schedule draws the faults of a run from rng: one after another, each
// undone before the next, over chaosFor. forced faults (long mode) are
// placed first, at a random point each.
func schedule(rng *rand.Rand, chaosFor time.Duration, workers int, long bool) []fault {
	kinds := []string{"partition-region", "partition-proxy", "drop", "loss", "latency", "bandwidth", "kill-worker", "kill-proxy", "kill-server"}
	var fs []fault
	var forced []fault
	if long {
		forced = []fault{
			{kind: "partition-region", target: rng.IntN(len(regionNames)), hold: 45 * time.Second},
			{kind: "partition-proxy", target: rng.IntN(proxies), hold: 30 * time.Second},
		}
	}
	forcedAt := map[int]bool{}
	at := 2 * time.Second
	for at < chaosFor {
		f := fault{at: at}
		// Place a forced fault now and then, so that they land inside the
		// run at random points.
		if len(forced) > 0 && rng.IntN(8) == 0 {
			f.kind, f.target, f.hold = forced[0].kind, forced[0].target, forced[0].hold
			forced = forced[1:]
			forcedAt[len(fs)] = true
		} else {
			f.kind = kinds[rng.IntN(len(kinds))]
			f.hold = time.Duration(1000+rng.IntN(5000)) * time.Millisecond
			switch f.kind {
			case "partition-region", "drop", "loss", "latency", "bandwidth":
				f.target = rng.IntN(len(regionNames))
			case "partition-proxy", "kill-proxy":
				f.target = rng.IntN(proxies)
			case "kill-worker":
				f.target, f.node = rng.IntN(len(regionNames)), rng.IntN(workers)
				f.hold = time.Duration(rng.IntN(2000)) * time.Millisecond
			case "kill-server":
				f.target, f.node = rng.IntN(len(regionNames)), rng.IntN(nodesPerRegion)
				f.hold = time.Duration(rng.IntN(3000)) * time.Millisecond
			}
			switch f.kind {
			case "loss":
				f.amount = 5 + rng.IntN(26)
			case "latency":
				f.amount = 20 + rng.IntN(200)
			case "bandwidth":
				f.amount = 16 + rng.IntN(112)
			}
		}
		fs = append(fs, f)
		at += f.hold + time.Duration(1000+rng.IntN(3000))*time.Millisecond
	}
	for _, f := range forced { // not placed yet: at the end
		f.at = at
		fs = append(fs, f)
		at += f.hold + 2*time.Second
	}
	return fs
}

// apply makes the fault; undo (returned) ends it.
func (c *cluster) apply(ctx context.Context, f fault) (undo func() error) {
	px := func(args ...string) error { return runErr("ip", append([]string{"-n", c.pxNS}, args...)...) }
	links := func(state string, pairs ...[2]int) error {
		var errs []error
		for _, pr := range pairs {
			errs = append(errs, px("link", "set", fmt.Sprintf("p%dr%d", pr[0], pr[1]), state))
		}
		return errors.Join(errs...)
	}
	flush := func(rg *region) func() error {
		return func() error {
			c.nft(rg, "flush chain inet chaos in\nflush chain inet chaos out\n")
			return nil
		}
	}
	toxics := func(r int, name string, mk func(p, n int) map[string]any) func() error {
		for p := range proxies {
			for n := range nodesPerRegion {
				for _, stream := range []string{"downstream", "upstream"} {
					tx := mk(p, n)
					tx["name"], tx["stream"] = name+"-"+stream, stream
					c.toxiPost(ctx, "/proxies/"+toxiName(p, r, n)+"/toxics", tx)
				}
			}
		}
		return func() error {
			var errs []error
			for p := range proxies {
				for n := range nodesPerRegion {
					for _, stream := range []string{"downstream", "upstream"} {
						errs = append(errs, c.toxiDo(ctx, "DELETE", "/proxies/"+toxiName(p, r, n)+"/toxics/"+name+"-"+stream, nil))
					}
				}
			}
			return errors.Join(errs...)
		}
	}
	restart := func(p *proc) func() error {
		p.kill()
		return func() error {
			if err := p.start(); err != nil {
				return err
			}
			rctx, cancel := context.WithTimeout(ctx, 90*time.Second)
			defer cancel()
			return p.waitReady(rctx)
		}
	}
	switch f.kind {
	case "partition-region":
		var pairs [][2]int
		for p := range proxies {
			pairs = append(pairs, [2]int{p, f.target})
		}
		if err := links("down", pairs...); err != nil {
			c.t.Errorf("%v: %v", f, err)
		}
		return func() error { return links("up", pairs...) }
	case "partition-proxy":
		var pairs [][2]int
		for r := range c.regions {
			pairs = append(pairs, [2]int{f.target, r})
		}
		if err := links("down", pairs...); err != nil {
			c.t.Errorf("%v: %v", f, err)
		}
		return func() error { return links("up", pairs...) }
	case "drop":
		rg := c.regions[f.target]
		c.nft(rg, "add rule inet chaos in iifname \"p*\" drop\nadd rule inet chaos out oifname \"p*\" drop\n")
		return flush(rg)
	case "loss":
		rg := c.regions[f.target]
		c.nft(rg, fmt.Sprintf("add rule inet chaos in iifname \"p*\" numgen random mod 100 < %d drop\n"+
			"add rule inet chaos out oifname \"p*\" numgen random mod 100 < %d drop\n", f.amount, f.amount))
		return flush(rg)
	case "latency":
		return toxics(f.target, "latency", func(p, n int) map[string]any {
			return map[string]any{"type": "latency", "attributes": map[string]any{"latency": f.amount, "jitter": f.amount / 4}}
		})
	case "bandwidth":
		return toxics(f.target, "bandwidth", func(p, n int) map[string]any {
			return map[string]any{"type": "bandwidth", "attributes": map[string]any{"rate": f.amount}}
		})
	case "kill-worker":
		return restart(c.regions[f.target].workers[f.node])
	case "kill-proxy":
		return restart(c.proxies[f.target])
	case "kill-server":
		return restart(c.regions[f.target].servers[f.node])
	}
	panic("unknown fault " + f.kind)
}

// TestNetnsChaos requests replications in both directions while the
// schedule's faults hit the network and the processes. Every request must
// end COMPLETED or FAILED with a reason (lost = 0), and every COMPLETED
// replica must hold the primary's key (mismatched = 0): ciphertext crosses
// both ways. The summary line is TestChaos's.
func TestNetnsChaos(t *testing.T) {
	skipUnlessNetns(t)
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("chaos: seed=%d (replay with -netns.seed %d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed>>1))
	keys, chaosFor, drain := 24, 50*time.Second, 3*time.Minute
	if *longFlag {
		keys, chaosFor, drain = 1000, 12*time.Minute, 10*time.Minute
	}
	workers := 1
	sched := schedule(rng, chaosFor, workers, *longFlag)
	var b strings.Builder
	for _, f := range sched {
		b.WriteString("\n  " + f.String())
	}
	t.Logf("chaos: schedule of %d faults:%s", len(sched), b.String())

	began := time.Now()
	c := newCluster(t, workers)
	t.Logf("chaos: partition up in %v (%d processes)", time.Since(began).Round(time.Millisecond), len(c.all()))
	ctx, cancel := context.WithTimeout(t.Context(), chaosFor+drain+5*time.Minute)
	defer cancel()
	cs := c.clients()

	// The faults, one after another.
	chaosDone := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(chaosDone)
		for _, f := range sched {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(start.Add(f.at))): // the schedule's pacing
			}
			undo := c.apply(ctx, f)
			select {
			case <-ctx.Done():
			case <-time.After(f.hold): // the fault's length
			}
			if err := undo(); err != nil {
				t.Errorf("undo %v: %v", f, err)
			}
			t.Logf("chaos: %v done at +%v", f, time.Since(start).Round(100*time.Millisecond))
		}
	}()

	// The load: keys made alternately in each region, each replicated to
	// the other, spread over the chaos; each request on its own goroutine
	// (at most 16 at once), retried until it goes through.
	type request struct {
		keyID    string
		src, dst int
	}
	var mu sync.Mutex
	var requested []request
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range keys {
		time.Sleep(chaosFor / time.Duration(keys+1)) // pacing of the load, not a wait for state
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			src, dst := i%2, 1-i%2
			var keyID string
			if err := retry(ctx, func(cctx context.Context) error {
				k, err := cs[src].CreateKey(cctx, api.CreateKeyRequest{Description: fmt.Sprint("netns ", i)})
				if err == nil {
					keyID = k.KeyID
				}
				return err
			}); err != nil {
				t.Errorf("create key %d in %s: %v", i, regionNames[src], err)
				return
			}
			token := fmt.Sprintf("netns-%d-%d", seed, i)
			if err := retry(ctx, func(cctx context.Context) error {
				_, err := cs[src].ReplicateKeyWithToken(cctx, keyID, regionNames[dst], token)
				return err
			}); err != nil {
				t.Errorf("replicate %s to %s: %v", keyID, regionNames[dst], err)
				return
			}
			mu.Lock()
			requested = append(requested, request{keyID, src, dst})
			mu.Unlock()
		})
	}
	wg.Wait()
	<-chaosDone
	t.Logf("chaos: faults over after %v; waiting for every request to end", time.Since(start).Round(time.Second))
	for _, p := range c.all() {
		if !p.running() {
			t.Errorf("%s is not running after the chaos", p.name)
		}
	}

	// Everything is up again: every request must reach a final state.
	final := map[request]api.Replica{}
	deadline := time.Now().Add(drain)
	for len(final) < len(requested) && time.Now().Before(deadline) && ctx.Err() == nil {
		for _, rq := range requested {
			if _, done := final[rq]; done {
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			k, err := cs[rq.src].DescribeKey(cctx, rq.keyID)
			cancel()
			if err != nil {
				continue
			}
			for _, r := range k.Replicas {
				if r.Region == regionNames[rq.dst] && (r.State == api.ReplicaEnabled || r.State == api.ReplicaFailed) {
					final[rq] = r
				}
			}
		}
		time.Sleep(250 * time.Millisecond) // poll interval
	}
	t.Logf("chaos: drained in %v", time.Since(deadline.Add(-drain)).Round(time.Second))
	var completed, failed, lost, mismatched int
	for _, rq := range requested {
		r, ok := final[rq]
		switch {
		case !ok:
			lost++
			t.Errorf("lost: replication of %s to %s never ended", rq.keyID, regionNames[rq.dst])
		case r.State == api.ReplicaFailed:
			failed++
			t.Logf("failed: %s to %s: %s", rq.keyID, regionNames[rq.dst], r.Reason)
			if r.Reason == "" {
				t.Errorf("replication of %s to %s FAILED without a reason", rq.keyID, regionNames[rq.dst])
			}
		default:
			completed++
			if err := sameKey(ctx, cs[rq.src], cs[rq.dst], rq.keyID); err != nil {
				mismatched++
				t.Errorf("mismatched: replica of %s in %s does not hold the primary's key: %v", rq.keyID, regionNames[rq.dst], err)
			}
		}
	}
	t.Logf("chaos: requested=%d completed=%d failed=%d lost=%d mismatched=%d", len(requested), completed, failed, lost, mismatched)
	t.Logf("chaos: seed=%d faults=%d duration=%v", seed, len(sched), time.Since(began).Round(time.Second))
	if len(requested) != keys {
		t.Errorf("requested %d replications, want %d", len(requested), keys)
	}
}

// retry calls fn until it succeeds or ctx ends: the region may be cut off
// right now.
func retry(ctx context.Context, fn func(context.Context) error) error {
	for {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := fn(cctx)
		cancel()
		if err == nil {
			return nil
		}
		var apiErr *client.Error
		if errors.As(err, &apiErr) && apiErr.Code != api.CodeInternal {
			return err // the API refused: retrying will not help
		}
		if ctx.Err() != nil {
			return err
		}
		time.Sleep(200 * time.Millisecond) // back-off between attempts, not a wait for state
	}
}

// sameKey checks that ciphertext crosses both ways between the regions of
// a and b (as TestChaos does); calls that fail for want of a connection
// are tried again.
func sameKey(ctx context.Context, a, b *client.Client, keyID string) error {
	for _, pair := range [][2]*client.Client{{a, b}, {b, a}} {
		var ct *api.EncryptResponse
		if err := retryConn(ctx, func(cctx context.Context) (err error) {
			ct, err = pair[0].Encrypt(cctx, keyID, []byte("chaos"), []byte(keyID))
			return err
		}); err != nil {
			return fmt.Errorf("encrypt in %s: %w", pair[0].Region(), err)
		}
		var pt *api.DecryptResponse
		if err := retryConn(ctx, func(cctx context.Context) (err error) {
			pt, err = pair[1].Decrypt(cctx, ct.CiphertextBlob, []byte(keyID))
			return err
		}); err != nil {
			return fmt.Errorf("decrypt in %s of ciphertext from %s: %w", pair[1].Region(), pair[0].Region(), err)
		}
		if !bytes.Equal(pt.Plaintext, []byte("chaos")) {
			return fmt.Errorf("decrypt in %s of ciphertext from %s: wrong plaintext", pair[1].Region(), pair[0].Region())
		}
	}
	return nil
}

// retryConn retries fn a few times on timeouts and missing responders only.
func retryConn(ctx context.Context, fn func(context.Context) error) error {
	var err error
	for range 5 {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = fn(cctx)
		cancel()
		if err == nil || !(errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders)) {
			return err
		}
	}
	return err
}
