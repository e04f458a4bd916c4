package e2e

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// relay sits where the proxy sits: it reads every region's outbox and
// delivers into the destination's inbox, after passing each message through
// tamper, which may rewrite it. It checks nothing: it is the attacker.
type relay struct {
	mu     sync.Mutex
	tamper func(env *messages.Envelope) []byte // nil: deliver as is
	seen   []*messages.Envelope                // every genuine message, in order
	twice  messages.Type                       // deliver messages of this type twice at once, under two Nats-Msg-Ids
}

func startRelay(t *testing.T, p *mrkrepltest.Partition) *relay {
	t.Helper()
	rl := &relay{}
	js := map[string]jetstream.JetStream{}
	for _, r := range p.Regions() {
		nc, err := p.Connect(r.Name, "relay")
		if err != nil {
			t.Fatal(err)
		}
		js[r.Name], _ = jetstream.New(nc)
	}
	for _, r := range p.Regions() {
		nc, _ := p.Connect(r.Name, "relay-sub")
		src := r.Name
		_, err := nc.Subscribe("mrk."+src+".out.>", func(m *nats.Msg) {
			env, err := messages.Parse(m.Data)
			if err != nil {
				return
			}
			rl.mu.Lock()
			rl.seen = append(rl.seen, env)
			tamper, twice := rl.tamper, rl.twice == env.Message.Type
			rl.mu.Unlock()
			raw := env.Raw
			if tamper != nil {
				raw = tamper(env)
			}
			if raw == nil {
				return
			}
			out := nats.NewMsg(messages.InboxSubject(env.Message.Dst, src, env.Message.Type))
			out.Data = raw
			id := env.Message.MsgID
			if !bytes.Equal(raw, env.Raw) {
				id += "-tampered"
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if twice {
				dup := nats.NewMsg(out.Subject)
				dup.Data = raw
				if _, err := js[env.Message.Dst].PublishMsgAsync(dup, jetstream.WithMsgID(id+"-copy")); err != nil {
					t.Errorf("relay: second copy: %v", err)
				}
			}
			_, _ = js[env.Message.Dst].PublishMsg(ctx, out, jetstream.WithMsgID(id))
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return rl
}

func (rl *relay) set(f func(env *messages.Envelope) []byte) {
	rl.mu.Lock()
	rl.tamper = f
	rl.mu.Unlock()
}

func (rl *relay) genuine(typ messages.Type, replicationID string) *messages.Envelope {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	for _, e := range rl.seen {
		if e.Message.Type == typ && e.Message.ReplicationID == replicationID {
			return e
		}
	}
	return nil
}

// TestAdversarialRelay runs real replications through a hostile relay.
// Whatever the relay does, no region may end up with a key other than the
// primary's, a refused message must be dead-lettered with its reason, and
// the run must end FAILED with a reason — never COMPLETED.
func TestAdversarialRelay(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{
		NoProxy: true, MaxAttempts: 1, RunTimeout: 3 * time.Second,
		MessageTTL: 20 * time.Second, SweepInterval: 100 * time.Millisecond,
	})
	ctx := ctxT(t, 2*time.Minute)
	rl := startRelay(t, p)
	const src, dst = "us-east-1", "eu-west-1"
	us, eu := p.Region(src).Client, p.Region(dst).Client
	euSigner, usSigner := p.Region(dst).HSM.Signer(), p.Region(src).HSM.Signer()
	attacker, _ := ecdh.P384().GenerateKey(rand.Reader)

	run := func(name string, tamper func(*messages.Envelope) []byte) (*api.Key, *api.Replication) {
		t.Helper()
		rl.set(tamper)
		key, err := us.CreateKey(ctx, api.CreateKeyRequest{Description: name})
		if err != nil {
			t.Fatal(err)
		}
		rep, err := us.ReplicateKey(ctx, key.KeyID, dst)
		if err != nil {
			t.Fatal(err)
		}
		rep, err = us.WaitReplication(ctx, rep.ReplicationID)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return key, rep
	}
	noReplica := func(name string, key *api.Key) {
		t.Helper()
		if k, err := eu.DescribeKey(ctx, key.KeyID); !client.IsNotFound(err) {
			t.Errorf("%s: %s holds key %+v (err %v); it must not", name, dst, k, err)
		}
	}
	dlq := map[string]int{src: 0, dst: 0}
	expectDLQ := func(name, region, reason string) {
		t.Helper()
		dlq[region]++
		nc, _ := p.Connect(region, "check")
		reasons := deadLetters(t, ctx, nc, layout.DLQStream(region), dlq[region])
		if got := reasons[len(reasons)-1]; got != reason {
			t.Errorf("%s: dead letter in %s has reason %q, want %q (all: %v)", name, region, got, reason, reasons)
		}
	}

	// Control: an honest relay works.
	key, rep := run("honest", nil)
	if rep.State != api.StateCompleted {
		t.Fatalf("honest relay: run ended %s: %s", rep.State, rep.Reason)
	}
	if !sameKey(ctx, p, key.KeyID, src, dst) {
		t.Fatal("honest relay: replica does not hold the key")
	}
	honestRun := rep.ReplicationID

	// MITM: the relay swaps B's RAKB for its own. The signature breaks.
	key, rep = run("mitm rakb", func(env *messages.Envelope) []byte {
		if env.Message.Type == messages.TypeOffer {
			return bytes.Replace(env.Raw, env.Message.Offer.RAKB, attacker.PublicKey().Bytes(), 1)
		}
		return env.Raw
	})
	if rep.State != api.StateFailed || rep.Reason == "" {
		t.Errorf("mitm rakb: run ended %s %q, want FAILED with a reason", rep.State, rep.Reason)
	}
	expectDLQ("mitm rakb", src, string(messages.ReasonBadSignature))
	noReplica("mitm rakb", key)

	// Tampered wrapped key: the signature breaks.
	key, rep = run("tampered wrap", func(env *messages.Envelope) []byte {
		if env.Message.Type == messages.TypeMaterial {
			w := env.Message.Material.WrappedKey
			return bytes.Replace(env.Raw, w, append(slices.Clone(w[:len(w)-1]), w[len(w)-1]^1), 1)
		}
		return env.Raw
	})
	if rep.State != api.StateFailed {
		t.Errorf("tampered wrap: run ended %s", rep.State)
	}
	expectDLQ("tampered wrap", dst, string(messages.ReasonBadSignature))
	noReplica("tampered wrap", key)

	// Splice: an offer that is validly signed by B (a compromised signer
	// stands in) but answers another run's init. A refuses it.
	key, rep = run("splice", func(env *messages.Envelope) []byte {
		if env.Message.Type != messages.TypeOffer {
			return env.Raw
		}
		m := env.Message
		m.MsgID = messages.NewID()
		m.Offer = &messages.Offer{InitDigest: rl.genuine(messages.TypeInit, honestRun).Digest, RAKB: m.Offer.RAKB}
		raw, err := messages.Seal(&m, euSigner)
		if err != nil {
			t.Error(err)
		}
		return raw
	})
	if rep.State != api.StateFailed {
		t.Errorf("splice: run ended %s", rep.State)
	}
	expectDLQ("splice", src, "state_mismatch")
	noReplica("splice", key)

	// Garbage key material, validly signed by A (compromised signer): B's
	// unwrap fails, B says so, no key is stored.
	key, rep = run("bad material", func(env *messages.Envelope) []byte {
		if env.Message.Type != messages.TypeMaterial {
			return env.Raw
		}
		m := env.Message
		mat := *m.Material
		mat.WrappedKey = append(slices.Clone(mat.WrappedKey[:len(mat.WrappedKey)-1]), mat.WrappedKey[len(mat.WrappedKey)-1]^1)
		m.Material = &mat
		m.MsgID = messages.NewID()
		raw, err := messages.Seal(&m, usSigner)
		if err != nil {
			t.Error(err)
		}
		return raw
	})
	// B's receipt names the digest of the material it got, which A never
	// sent: A refuses the receipt too, and its run times out.
	if rep.State != api.StateFailed || rep.Reason == "" {
		t.Errorf("bad material: run ended %s %q, want FAILED with a reason", rep.State, rep.Reason)
	}
	expectDLQ("bad material", src, "state_mismatch")
	if r, err := eu.DescribeReplication(ctx, rep.ReplicationID); err != nil || r.State != api.StateFailed || r.Reason != messages.StatusUnwrapFailed {
		t.Errorf("bad material: %s's run %v %+v, want FAILED %s", dst, err, r, messages.StatusUnwrapFailed)
	}
	noReplica("bad material", key)
	if has, err := p.Region(dst).HSM.HasKey(ctx, hsmKeyRef(key.KeyID)); err != nil || has {
		t.Errorf("bad material: %s's HSM holds the key (%v)", dst, err)
	}

	// Replay inside the validity window: the honest run's messages again.
	// Nothing changes: the same replies are re-published and de-duplicated.
	rl.set(nil)
	euNC, _ := p.Connect(dst, "check")
	before := outboxCount(t, ctx, euNC, dst)
	nc, _ := p.Connect(dst, "replayer")
	js, _ := jetstream.New(nc)
	for _, typ := range []messages.Type{messages.TypeInit, messages.TypeMaterial} {
		env := rl.genuine(typ, honestRun)
		if _, err := js.Publish(ctx, messages.InboxSubject(dst, src, typ), env.Raw); err != nil {
			t.Fatal(err)
		}
	}
	// The replays are handled once the inbox consumer has nothing pending.
	waitFor(t, ctx, func() bool {
		cons, err := js.Consumer(ctx, layout.InboxStream(dst), "worker")
		if err != nil {
			return false
		}
		info, err := cons.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
	if after := outboxCount(t, ctx, euNC, dst); after != before {
		t.Errorf("replayed messages made %s send %d new messages", dst, after-before)
	}
	if rep, err := eu.DescribeReplication(ctx, honestRun); err != nil || rep.State != api.StateCompleted {
		t.Errorf("honest run after replay: %v %+v", err, rep)
	}
}

func hsmKeyRef(keyID string) hsmsvc.KeyRef { return hsmsvc.KeyRef{KeyID: keyID, Version: 1} }

// TestInitDeliveredTwiceAtOnce: the same init reaches the destination's
// inbox twice at once (a relay that does not de-duplicate, or a delivery
// redelivered while the first copy still waits for a worker): the two
// copies are handled concurrently, and the run must still complete — one
// handler makes the RAKB and the offer, the other answers with that offer;
// neither may destroy the RAKB the other's offer names.
func TestInitDeliveredTwiceAtOnce(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{NoProxy: true, Regions: []string{"us-east-1", "eu-west-1"}})
	rl := startRelay(t, p)
	rl.mu.Lock()
	rl.twice = messages.TypeInit
	rl.mu.Unlock()
	ctx := ctxT(t, time.Minute)
	c := p.Region("us-east-1").Client
	var wg sync.WaitGroup
	for range 12 {
		wg.Go(func() {
			key, err := c.CreateKey(ctx, api.CreateKeyRequest{})
			if err != nil {
				t.Error(err)
				return
			}
			rep, err := c.ReplicateKey(ctx, key.KeyID, "eu-west-1")
			if err != nil {
				t.Error(err)
				return
			}
			if rep, err = c.WaitReplication(ctx, rep.ReplicationID); err != nil || rep.State != api.StateCompleted {
				t.Errorf("replication of %s with its init delivered twice: %v %+v", key.KeyID, err, rep)
			}
		})
	}
	wg.Wait()
}

// TestInitClaimTakenOver: a destination handler that crashed after
// claiming an init (its pending entry written, no run stored) does not
// block the init for good: a later delivery finds the claim older than a
// handler can live, takes it over, and answers with an offer.
func TestInitClaimTakenOver(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{NoProxy: true, Regions: []string{"us-east-1", "eu-west-1"}})
	ctx := ctxT(t, time.Minute)
	const a, b = "us-east-1", "eu-west-1"
	nc, err := p.Connect(b, "check")
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	pending, err := js.KeyValue(ctx, layout.PendingBucket(b))
	if err != nil {
		t.Fatal(err)
	}
	init := hostileValidInit(t, p, a, b, nil)
	// The claim a crashed handler left 40 s ago.
	old := time.Now().Add(-40 * time.Second).UnixMilli()
	if _, err := pending.Create(ctx, init.replicationID, []byte(strconv.FormatInt(old, 10))); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, messages.InboxSubject(b, a, messages.TypeInit), init.raw); err != nil {
		t.Fatal(err)
	}
	waitOffer(t, ctx, nc, b, init.replicationID)
	e, err := pending.Get(ctx, init.replicationID)
	if err != nil {
		t.Fatalf("the run's pending entry: %v", err)
	}
	if ms, _ := strconv.ParseInt(string(e.Value()), 10, 64); ms <= old {
		t.Errorf("pending entry still the crashed handler's (%d), want a fresh claim", ms)
	}
}
