package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/nats-io/nats.go/jetstream"
)

var (
	chaosSeed = flag.Uint64("chaos.seed", 0, "seed of TestChaos (0: from the clock; the seed used is logged)")
	chaosLong = flag.Bool("chaos.long", false, "run TestChaos for minutes instead of seconds")
)

// TestChaos requests replications across three regions while killing and
// restarting proxies, workers and NATS servers (JetStream data kept) and
// cutting one region off for a while. Every request must end COMPLETED or
// FAILED with a reason (lost = 0), and every COMPLETED replica must hold the
// primary's key (mismatched = 0): ciphertext crosses both ways.
//
//	go test ./e2e -run TestChaos -v                       # short, as in CI
//	go test ./e2e -run TestChaos -v -chaos.long -timeout 30m
//	go test ./e2e -run TestChaos -v -chaos.seed 1234      # replay a run
func TestChaos(t *testing.T) {
	seed := *chaosSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("chaos: seed=%d", seed)
	rng := rand.New(rand.NewPCG(seed, seed>>1))
	keys, chaosFor := 12, 12*time.Second
	if *chaosLong {
		keys, chaosFor = 200, 3*time.Minute
	}
	if testing.Short() {
		keys, chaosFor = 6, 6*time.Second
	}
	const messageTTL = 5 * time.Second
	dir := t.TempDir()
	p := mrkrepltest.New(t, mrkrepltest.Options{
		Dir: dir,
		// Persisted soft HSMs: key material survives everything but the disk.
		HSM:           func(r string) string { return "soft:" + dir + "/" + r + "/hsm" },
		MessageTTL:    messageTTL,
		ClockSkew:     500 * time.Millisecond,
		RunTimeout:    messageTTL + 2*time.Second,
		MaxAttempts:   20,
		SweepInterval: 250 * time.Millisecond,
	})
	ctx := ctxT(t, chaosFor+4*time.Minute)
	regions := p.Regions()
	primary := regions[0]
	others := []string{regions[1].Name, regions[2].Name}

	type request struct {
		keyID, dst string
	}
	var mu sync.Mutex // guards requested and the partition's components
	var requested []request
	var rotated []string

	// retry calls fn until it succeeds: the region may be down right now.
	retry := func(what string, fn func(context.Context) error) {
		t.Helper()
		for {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			mu.Lock()
			err := fn(cctx)
			mu.Unlock()
			cancel()
			if err == nil {
				return
			}
			if ctx.Err() != nil {
				t.Fatalf("%s: %v", what, err)
			}
			time.Sleep(50 * time.Millisecond) // back-off between attempts, not a wait for state
		}
	}

	chaosDone := make(chan struct{})
	var actions []string
	go func() {
		defer close(chaosDone)
		end := time.Now().Add(chaosFor)
		// One long outage of a replica region, longer than a message's
		// validity: what was in flight to it expires, and its runs must
		// time out and be retried with fresh runs.
		longCut := time.Now().Add(chaosFor/4 + time.Duration(rng.IntN(int(chaosFor/4))))
		for time.Now().Before(end) && ctx.Err() == nil {
			if !longCut.IsZero() && time.Now().After(longCut) {
				longCut = time.Time{}
				r := others[rng.IntN(len(others))]
				mu.Lock()
				actions = append(actions, "long-cut:"+r)
				p.StopServer(r)
				mu.Unlock()
				time.Sleep(messageTTL + 2*time.Second) // the outage
				mu.Lock()
				if err := p.StartServer(r); err != nil {
					t.Errorf("restore region %s: %v", r, err)
				}
				mu.Unlock()
				continue
			}
			time.Sleep(time.Duration(200+rng.IntN(500)) * time.Millisecond) // pacing of faults
			r := regions[rng.IntN(len(regions))].Name
			mu.Lock()
			switch rng.IntN(4) {
			case 0:
				actions = append(actions, "worker:"+r)
				p.KillWorker(r)
				err := p.StartWorker(ctx, r)
				if err != nil {
					t.Errorf("restart worker %s: %v", r, err)
				}
			case 1:
				actions = append(actions, "proxy")
				p.KillProxy()
				if err := p.StartProxy(ctx); err != nil {
					t.Errorf("restart proxy: %v", err)
				}
			case 2:
				actions = append(actions, "server:"+r)
				p.StopServer(r)
				if err := p.StartServer(r); err != nil {
					t.Errorf("restart server %s: %v", r, err)
				}
			case 3:
				// Cut the region off for a while (its server down), letting
				// the others work meanwhile.
				actions = append(actions, "cut:"+r)
				p.StopServer(r)
				mu.Unlock()
				time.Sleep(time.Duration(500+rng.IntN(1500)) * time.Millisecond) // outage length
				mu.Lock()
				if err := p.StartServer(r); err != nil {
					t.Errorf("restore region %s: %v", r, err)
				}
			}
			mu.Unlock()
		}
	}()

	// Requests, during the chaos: half through the API, half as events.
	for i := range keys {
		// Spread the requests over the chaos, so faults hit runs in flight.
		time.Sleep(chaosFor / time.Duration(keys+1)) // pacing, not a wait for state
		var keyID string
		retry("create key", func(c context.Context) error {
			k, err := primary.Client.CreateKey(c, api.CreateKeyRequest{Description: fmt.Sprint("chaos ", i)})
			if err == nil {
				keyID = k.KeyID
			}
			return err
		})
		for _, dst := range others {
			if i%2 == 0 {
				retry("replicate", func(c context.Context) error {
					_, err := primary.Client.ReplicateKey(c, keyID, dst)
					return err
				})
			} else {
				body, _ := json.Marshal(api.ReplicateKeyRequest{KeyID: keyID, ReplicaRegion: dst})
				retry("publish request", func(c context.Context) error {
					// Published inside the region's account (admin): the
					// worker's user may not publish request events.
					nc, err := p.Connect(primary.Name, "chaos-requests")
					if err != nil {
						return err
					}
					js, err := jetstream.New(nc)
					if err != nil {
						return err
					}
					_, err = js.Publish(c, layout.RequestSubject(primary.Name, api.OpReplicateKey), body)
					return err
				})
			}
			requested = append(requested, request{keyID, dst})
		}
		if i%3 == 0 {
			// Rotate while the first copies are on their way: the new
			// version must reach every replica, then become current.
			retry("rotate", func(c context.Context) error {
				_, err := primary.Client.RotateKey(c, keyID)
				if apiCode(err) == api.CodeConflict {
					return nil // an earlier attempt went through (its reply was lost)
				}
				return err
			})
			rotated = append(rotated, keyID)
		}
	}
	<-chaosDone
	t.Logf("chaos: faults=%d %v", len(actions), actions)

	// Everything is up again: every request must reach a final state.
	final := map[request]api.Replica{}
	deadline := time.Now().Add(3 * time.Minute)
	for len(final) < len(requested) && time.Now().Before(deadline) {
		for _, rq := range requested {
			if _, done := final[rq]; done {
				continue
			}
			k, err := primary.Client.DescribeKey(ctx, rq.keyID)
			if err != nil {
				continue
			}
			for _, r := range k.Replicas {
				if r.Region == rq.dst && (r.State == api.ReplicaEnabled || r.State == api.ReplicaFailed) {
					final[rq] = r
				}
			}
		}
		time.Sleep(100 * time.Millisecond) // poll interval
	}
	var completed, failed, lost, mismatched int
	for _, rq := range requested {
		r, ok := final[rq]
		switch {
		case !ok:
			lost++
			t.Errorf("lost: replication of %s to %s never ended", rq.keyID, rq.dst)
		case r.State == api.ReplicaFailed:
			failed++
			t.Logf("failed: %s to %s: %s", rq.keyID, rq.dst, r.Reason)
			if r.Reason == "" {
				t.Errorf("replication of %s to %s FAILED without a reason", rq.keyID, rq.dst)
			}
		default:
			completed++
			if !sameKey(ctx, p, rq.keyID, primary.Name, rq.dst) {
				mismatched++
				t.Errorf("mismatched: replica of %s in %s does not hold the primary's key", rq.keyID, rq.dst)
			}
		}
	}
	t.Logf("chaos: requested=%d completed=%d failed=%d lost=%d mismatched=%d", len(requested), completed, failed, lost, mismatched)

	// Every rotated key ends with version 2 current in the primary and in
	// every replica that did not fail, and both versions in each.
	stuck := 0
	for _, keyID := range rotated {
		regions := []string{primary.Name}
		for _, rq := range requested {
			if rq.keyID == keyID && final[rq].State == api.ReplicaEnabled {
				regions = append(regions, rq.dst)
			}
		}
		for _, r := range regions {
			wctx, cancel := context.WithTimeout(ctx, time.Minute)
			k, err := p.Region(r).Client.WaitKey(wctx, keyID, func(k *api.Key) bool {
				return k != nil && k.CurrentVersion == 2 && len(k.Versions) == 2
			})
			cancel()
			if err != nil {
				stuck++
				t.Errorf("rotation of %s: %s still at %+v: %v", keyID, r, k, err)
			}
		}
	}
	t.Logf("chaos: rotated=%d stuck=%d", len(rotated), stuck)
}

// sameKey checks that ciphertext crosses both ways between two regions.
func sameKey(ctx context.Context, p *mrkrepltest.Partition, keyID, a, b string) bool {
	ra, rb := p.Region(a).Client, p.Region(b).Client
	for _, pair := range [][2]interface {
		Encrypt(context.Context, string, []byte, []byte) (*api.EncryptResponse, error)
		Decrypt(context.Context, []byte, []byte) (*api.DecryptResponse, error)
	}{{ra, rb}, {rb, ra}} {
		ct, err := pair[0].Encrypt(ctx, keyID, []byte("chaos"), []byte(keyID))
		if err != nil {
			return false
		}
		pt, err := pair[1].Decrypt(ctx, ct.CiphertextBlob, []byte(keyID))
		if err != nil || !bytes.Equal(pt.Plaintext, []byte("chaos")) {
			return false
		}
	}
	return true
}
