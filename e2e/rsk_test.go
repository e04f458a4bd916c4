package e2e

import (
	"bytes"
	"context"
	"crypto"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/internal/softhsm"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// outboxMessages returns every message in region's outbox after sequence
// after, parsed, and the stream's last sequence.
func outboxMessages(t *testing.T, ctx context.Context, nc *nats.Conn, region string, after uint64) (envs []*messages.Envelope, last uint64) {
	t.Helper()
	js, _ := jetstream.New(nc)
	st, err := js.Stream(ctx, layout.OutboxStream(region))
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for seq := after + 1; seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("outbox message %d: %v", seq, err)
		}
		env, err := messages.Parse(m.Data)
		if err != nil {
			t.Fatalf("outbox message %d: %v", seq, err)
		}
		envs = append(envs, env)
	}
	return envs, info.State.LastSeq
}

// outboxKIDs returns the kid of every message in region's outbox after
// sequence after, and the stream's last sequence.
func outboxKIDs(t *testing.T, ctx context.Context, nc *nats.Conn, region string, after uint64) (kids [][]byte, last uint64) {
	t.Helper()
	envs, last := outboxMessages(t, ctx, nc, region, after)
	for _, env := range envs {
		kids = append(kids, env.KID)
	}
	return kids, last
}

// logDeadLetters logs every dead letter of the regions' DLQs with the
// component that refused it and why (for a failing test's output).
func logDeadLetters(t *testing.T, conns map[string]*nats.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for region, nc := range conns {
		js, _ := jetstream.New(nc)
		st, err := js.Stream(ctx, layout.DLQStream(region))
		if err != nil {
			t.Logf("dead letters of %s: %v", region, err)
			continue
		}
		info, err := st.Info(ctx)
		if err != nil {
			t.Logf("dead letters of %s: %v", region, err)
			continue
		}
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq && seq > 0; seq++ {
			m, err := st.GetMsg(ctx, seq)
			if err != nil {
				continue
			}
			t.Logf("dead letter %s #%d: %s refused %s: %s (%s)", region, seq, m.Header.Get(layout.HeaderComponent),
				m.Header.Get(layout.HeaderOriginalSubject), m.Header.Get(layout.HeaderReason), m.Header.Get(layout.HeaderDetail))
		}
	}
}

// deadLetterOf waits until stream holds a dead letter of exactly raw and
// returns the component that refused it and the reason.
func deadLetterOf(t *testing.T, ctx context.Context, nc *nats.Conn, stream string, raw []byte) (component, reason string) {
	t.Helper()
	js, _ := jetstream.New(nc)
	next := uint64(1)
	for {
		if st, err := js.Stream(ctx, stream); err == nil {
			if info, err := st.Info(ctx); err == nil {
				for ; next <= info.State.LastSeq; next++ {
					m, err := st.GetMsg(ctx, next)
					if err != nil {
						t.Fatalf("dead letter %d: %v", next, err)
					}
					// A dead letter keeps a prefix of the message and its
					// SHA-256 (layout.DeadLetter).
					if m.Header.Get(layout.HeaderSHA256) == layout.MsgID(raw) && bytes.HasPrefix(raw, m.Data) {
						return m.Header.Get(layout.HeaderComponent), m.Header.Get(layout.HeaderReason)
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no dead letter of the message in %s before the deadline", stream)
		case <-time.After(10 * time.Millisecond): // poll interval
		}
	}
}

// initSignedBy seals a valid init from src to dst with signer.
func initSignedBy(t *testing.T, p *mrkrepltest.Partition, src, dst string, signer crypto.Signer) ([]byte, string) {
	t.Helper()
	now := time.Now()
	m := &messages.Message{
		Header: messages.Header{
			V: 1, Type: messages.TypeInit, MsgID: messages.NewID(), ReplicationID: messages.NewID(),
			Partition: p.Bundle.Partition(), Src: src, Dst: dst,
			SentAt: now.UnixMilli(), ExpiresAt: now.Add(5 * time.Minute).UnixMilli(),
		},
		Init: &messages.Init{KeyID: messages.NewKeyID(), KeySpec: "SYMMETRIC_DEFAULT", KeyUsage: "ENCRYPT_DECRYPT", Version: 1, PrimaryRegion: src},
	}
	raw, err := messages.Seal(m, signer)
	if err != nil {
		t.Fatal(err)
	}
	return raw, m.ReplicationID
}

// waitOffer waits until region's outbox holds an offer for replicationID:
// the region's worker accepted the init of that run.
func waitOffer(t *testing.T, ctx context.Context, nc *nats.Conn, region, replicationID string) {
	t.Helper()
	js, _ := jetstream.New(nc)
	next := uint64(1)
	for {
		if st, err := js.Stream(ctx, layout.OutboxStream(region)); err == nil {
			if info, err := st.Info(ctx); err == nil {
				for ; next <= info.State.LastSeq; next++ {
					m, err := st.GetMsg(ctx, next)
					if err != nil {
						t.Fatalf("outbox message %d: %v", next, err)
					}
					if env, err := messages.Parse(m.Data); err == nil && env.Message.Type == messages.TypeOffer && env.Message.ReplicationID == replicationID {
						return
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s sent no offer for replication %s before the deadline", region, replicationID)
		case <-time.After(10 * time.Millisecond): // poll interval
		}
	}
}

// TestRSKRotation rotates a region's RSK while the partition runs, the way
// docs/OPERATIONS.md describes: a new RSK is made in the region's HSM and
// added to the trust bundle, which every worker and the proxy take without
// a restart; the region then signs with the new RSK while messages signed
// with the old one still verify; once the old one is retired, then removed,
// its messages are refused by the proxy and by the receiving worker, each
// with its reason; replication works throughout, in both directions.
func TestRSKRotation(t *testing.T) {
	testRSKRotation(t, mrkrepltest.New(t, mrkrepltest.Options{}))
}

// TestRSKRotationPKCS11 is TestRSKRotation with the rotating region on a
// SoftHSM2 token: the new RSK is a second key pair in the token. (Skips
// without SoftHSM2 unless MRKREPL_REQUIRE_SOFTHSM=1.)
func TestRSKRotationPKCS11(t *testing.T) {
	uri := softhsm.NewToken(t, "e2e-rotation")
	opts := hsmsvc.Options{AllowHostKDF: true}
	if _, err := hsmsvc.InitPKCS11RSK(t.Context(), uri, opts); err != nil {
		t.Fatal(err)
	}
	p := mrkrepltest.New(t, mrkrepltest.Options{
		HSMOptions: opts,
		HSM: func(r string) string {
			if r == "us-east-1" {
				return uri
			}
			return "soft:"
		},
	})
	if b := p.Region("us-east-1").HSM.Backend(); b != "pkcs11" {
		t.Fatalf("us-east-1 runs %s, want pkcs11", b)
	}
	testRSKRotation(t, p)
}

func testRSKRotation(t *testing.T, p *mrkrepltest.Partition) {
	ctx := ctxT(t, 2*time.Minute)
	const a, b = "us-east-1", "eu-west-1"
	aClient, bClient := p.Region(a).Client, p.Region(b).Client
	oldSigner := p.Region(a).HSM.Signer()
	oldKID, err := messages.KID(oldSigner.Public())
	if err != nil {
		t.Fatal(err)
	}
	anc, err := p.Connect(a, "check")
	if err != nil {
		t.Fatal(err)
	}
	bnc, err := p.Connect(b, "check")
	if err != nil {
		t.Fatal(err)
	}
	bjs, _ := jetstream.New(bnc)
	ajs, _ := jetstream.New(anc)

	// Before: a key replicated, every message of A signed by the old RSK.
	before, _ := newReplicatedKey(t, ctx, aClient, b)
	kids, seq := outboxKIDs(t, ctx, anc, a, 0)
	if len(kids) == 0 {
		t.Fatal("A's outbox is empty after a replication")
	}
	for _, k := range kids {
		if !bytes.Equal(k, oldKID) {
			t.Fatalf("before the rotation A signed with kid %x, want the old %x", k[:8], oldKID[:8])
		}
	}

	// Rotate: new messages of A carry the new kid.
	newKID, err := p.RotateRSK(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(newKID, oldKID) {
		t.Fatal("RotateRSK returned the old kid")
	}
	during, _ := newReplicatedKey(t, ctx, aClient, b)
	kids, seq = outboxKIDs(t, ctx, anc, a, seq)
	if len(kids) < 2 { // init and material at least
		t.Fatalf("A sent %d messages for a replication after the rotation", len(kids))
	}
	for _, k := range kids {
		if !bytes.Equal(k, newKID) {
			t.Errorf("after the rotation A signed with kid %x, want the new %x", k[:8], newKID[:8])
		}
	}
	// B's side is unchanged: it still signs with its only RSK, which A verifies.
	newReplicatedKey(t, ctx, bClient, a)

	// Overlap: a message signed with the old RSK still verifies, at the
	// proxy (it is forwarded) and at B's worker (it answers with an offer).
	overlap, overlapRun := initSignedBy(t, p, a, b, oldSigner)
	if _, err := ajs.Publish(ctx, messages.OutboxSubject(a, b, messages.TypeInit), overlap); err != nil {
		t.Fatal(err)
	}
	waitOffer(t, ctx, bnc, b, overlapRun)

	// Retire the old RSK (not_after in the past): refused as kid_not_valid
	// by the proxy (dead letter on A's DLQ) and by B's worker (B's DLQ).
	if err := p.RetireRSK(oldKID, time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	for _, want := range []messages.Reason{messages.ReasonKIDNotValid, messages.ReasonUnknownKID} {
		viaProxy, _ := initSignedBy(t, p, a, b, oldSigner)
		if _, err := ajs.Publish(ctx, messages.OutboxSubject(a, b, messages.TypeInit), viaProxy); err != nil {
			t.Fatal(err)
		}
		if comp, reason := deadLetterOf(t, ctx, anc, layout.DLQStream(a), viaProxy); comp != "proxy" || reason != string(want) {
			t.Errorf("old RSK via the proxy: refused by %q as %q, want proxy, %s", comp, reason, want)
		}
		direct, _ := initSignedBy(t, p, a, b, oldSigner)
		if _, err := bjs.Publish(ctx, messages.InboxSubject(b, a, messages.TypeInit), direct); err != nil {
			t.Fatal(err)
		}
		if comp, reason := deadLetterOf(t, ctx, bnc, layout.DLQStream(b), direct); comp != "worker" || reason != string(want) {
			t.Errorf("old RSK straight to B's worker: refused by %q as %q, want worker, %s", comp, reason, want)
		}
		if want == messages.ReasonKIDNotValid {
			// Then remove it from the bundle: unknown_kid.
			if err := p.RemoveRSK(oldKID); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, ok := p.Bundle.Key(oldKID); ok {
		t.Fatal("the old kid is still in the bundle")
	}

	// Replication still works end to end, both ways, and the keys made
	// before and during the rotation still decrypt everywhere. (The outbox
	// now also holds the old-signed messages injected above: skip them.)
	_, seq = outboxKIDs(t, ctx, anc, a, 0)
	after, _ := newReplicatedKey(t, ctx, aClient, b)
	newReplicatedKey(t, ctx, bClient, a)
	kids, _ = outboxKIDs(t, ctx, anc, a, seq)
	for _, k := range kids {
		if !bytes.Equal(k, newKID) {
			t.Errorf("after the retirement A signed with kid %x, want the new %x", k[:8], newKID[:8])
		}
	}
	ab := []*mrkrepltest.Region{p.Region(a), p.Region(b)}
	for _, k := range []string{before.KeyID, during.KeyID, after.KeyID} {
		crossDecrypt(t, ctx, k, ab)
	}

	// Runs in flight when a region rotates finish: B rotates while A's
	// replications to B are under way (B's offers may be signed by either
	// RSK; the key derivation uses the kid that signed each message).
	var reps []string
	for range 4 {
		k, err := aClient.CreateKey(ctx, api.CreateKeyRequest{})
		if err != nil {
			t.Fatal(err)
		}
		rep, err := aClient.ReplicateKey(ctx, k.KeyID, b)
		if err != nil {
			t.Fatal(err)
		}
		reps = append(reps, rep.ReplicationID)
	}
	if _, err := p.RotateRSK(ctx, b); err != nil {
		t.Fatal(err)
	}
	for _, id := range reps {
		if rep, err := aClient.WaitReplication(ctx, id); err != nil || rep.State != api.StateCompleted {
			t.Errorf("replication %s across B's rotation: %v %+v", id, err, rep)
			logDeadLetters(t, map[string]*nats.Conn{a: anc, b: bnc})
		}
	}

	// A worker started afresh (the bundle lists only A's new RSK) signs
	// with it too.
	p.KillWorker(a)
	if err := p.StartWorker(ctx, a); err != nil {
		t.Fatal(err)
	}
	newReplicatedKey(t, ctx, p.Region(a).Client, "ap-southeast-2")
}
