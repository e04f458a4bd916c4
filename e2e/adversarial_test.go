package e2e

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"math/big"
	"slices"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// badMessage is one hostile input and the reason it must be refused with.
type badMessage struct {
	name   string
	raw    []byte
	reason messages.Reason
	// atWorker is the reason when the message reaches the worker directly,
	// if it differs (the worker checks dst against itself first).
	atWorker messages.Reason
}

// hostileMessages builds messages from src to dst that a relay or a
// compromised host could inject, each with exactly one defect.
func hostileMessages(t *testing.T, p *mrkrepltest.Partition, src, dst string, retired crypto.Signer) []badMessage {
	t.Helper()
	attacker, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srcSigner := p.Region(src).HSM.Signer()
	dstSigner := p.Region(dst).HSM.Signer()
	var third string
	for _, r := range p.Bundle.Regions() {
		if r != src && r != dst {
			third = r
		}
	}
	thirdSigner := p.Region(third).HSM.Signer()
	now := time.Now()
	init := func(edit func(*messages.Message)) *messages.Message {
		m := &messages.Message{
			Header: messages.Header{
				V: 1, Type: messages.TypeInit, MsgID: messages.NewID(), ReplicationID: messages.NewID(),
				Partition: p.Bundle.Partition(), Src: src, Dst: dst,
				SentAt: now.UnixMilli(), ExpiresAt: now.Add(5 * time.Minute).UnixMilli(),
			},
			Init: &messages.Init{
				KeyID: messages.NewKeyID(), KeySpec: "SYMMETRIC_DEFAULT", KeyUsage: "ENCRYPT_DECRYPT",
				Version: 1, PrimaryRegion: src,
			},
		}
		if edit != nil {
			edit(m)
		}
		return m
	}
	seal := func(m *messages.Message, s crypto.Signer) []byte {
		t.Helper()
		raw, err := messages.Seal(m, s)
		if err != nil {
			t.Fatalf("seal: %v", err)
		}
		return raw
	}
	valid := seal(init(nil), srcSigner)
	flipped := slices.Clone(valid)
	flipped[len(flipped)-1] ^= 0x01
	// A material message, to tamper with its RAKA and wrapped key.
	attackerRAK, err := ecdh.P384().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	genuineRAK, _ := ecdh.P384().GenerateKey(rand.Reader)
	mat := init(func(m *messages.Message) {
		m.Type, m.Init = messages.TypeMaterial, nil
		m.Material = &messages.Material{
			OfferDigest: messages.Digest([]byte("some offer")), RAKA: genuineRAK.PublicKey().Bytes(),
			WrappedKey: bytes.Repeat([]byte{0xa5}, 40),
			Properties: messages.Properties{KeySpec: "SYMMETRIC_DEFAULT", KeyUsage: "ENCRYPT_DECRYPT"},
		}
	})
	matRaw := seal(mat, srcSigner)
	mitm := bytes.Replace(matRaw, genuineRAK.PublicKey().Bytes(), attackerRAK.PublicKey().Bytes(), 1)
	tamperedWrap := bytes.Replace(matRaw, bytes.Repeat([]byte{0xa5}, 40), append(bytes.Repeat([]byte{0xa5}, 39), 0x5a), 1)
	return []badMessage{
		{"material with the relay's own RAKA (MITM)", mitm, messages.ReasonBadSignature, ""},
		{"material with tampered wrapped key", tamperedWrap, messages.ReasonBadSignature, ""},
		{"high-S signature", highS(t, valid), messages.ReasonNonCanonical, ""},
		{"signed by a retired rsk", seal(init(nil), retired), messages.ReasonKIDNotValid, ""},
		{"garbage", []byte("not a cose message"), messages.ReasonMalformed, ""},
		{"empty", []byte{}, messages.ReasonMalformed, ""},
		{"truncated", valid[:len(valid)-10], messages.ReasonMalformed, ""},
		{"trailing byte", append(slices.Clone(valid), 0x00), messages.ReasonMalformed, ""},
		{"oversized", make([]byte, messages.MaxMessageSize+1), messages.ReasonTooLarge, ""},
		{"flipped signature bit", flipped, messages.ReasonBadSignature, ""},
		{"unknown signer", seal(init(nil), attacker), messages.ReasonUnknownKID, ""},
		{"signed by another region's rsk", seal(init(nil), thirdSigner), messages.ReasonKIDWrongRegion, ""},
		{"signed by the destination's rsk", seal(init(nil), dstSigner), messages.ReasonKIDWrongRegion, ""},
		{"wrong partition", seal(init(func(m *messages.Message) { m.Partition = "other" }), srcSigner), messages.ReasonWrongPartition, ""},
		{"expired", seal(init(func(m *messages.Message) {
			m.SentAt = now.Add(-30 * time.Minute).UnixMilli()
			m.ExpiresAt = now.Add(-10 * time.Minute).UnixMilli()
		}), srcSigner), messages.ReasonExpired, ""},
		{"from the future", seal(init(func(m *messages.Message) {
			m.SentAt = now.Add(time.Hour).UnixMilli()
			m.ExpiresAt = now.Add(2 * time.Hour).UnixMilli()
		}), srcSigner), messages.ReasonFromFuture, ""},
		{"addressed elsewhere", seal(init(func(m *messages.Message) { m.Dst = third }), srcSigner), messages.ReasonSubject, messages.ReasonWrongDst},
		{"unknown region", seal(init(func(m *messages.Message) { m.Dst = "mars-1" }), srcSigner), messages.ReasonUnknownRegion, ""},
	}
}

// deadLetters waits until stream holds n messages and returns their reasons.
func deadLetters(t *testing.T, ctx context.Context, nc *nats.Conn, stream string, n int) []string {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var got uint64
	for ctx.Err() == nil {
		st, err := js.Stream(ctx, stream)
		if err == nil {
			info, err := st.Info(ctx)
			if err == nil {
				got = info.State.Msgs
				if got >= uint64(n) {
					var reasons []string
					for seq := uint64(1); seq <= info.State.LastSeq; seq++ {
						m, err := st.GetMsg(ctx, seq)
						if err != nil {
							t.Fatalf("get dead letter %d: %v", seq, err)
						}
						reasons = append(reasons, m.Header.Get(layout.HeaderReason))
					}
					return reasons
				}
			}
		}
		time.Sleep(10 * time.Millisecond) // poll interval, not a wait for state
	}
	t.Fatalf("%s holds %d dead letters, want %d", stream, got, n)
	return nil
}

func streamMsgs(t *testing.T, ctx context.Context, nc *nats.Conn, stream string) uint64 {
	t.Helper()
	js, _ := jetstream.New(nc)
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func sortedReasons(bad []badMessage) []string {
	var out []string
	for _, b := range bad {
		out = append(out, string(b.reason))
	}
	slices.Sort(out)
	return out
}

// TestAdversarialProxy injects hostile messages into a region's
// outbox, where only its worker should write: the proxy must refuse every
// one with the right reason, dead-letter it, and forward none.
func TestAdversarialProxy(t *testing.T) {
	retired, retiredKey := retiredRSK(t, "us-east-1")
	p := mrkrepltest.New(t, mrkrepltest.Options{ExtraBundleKeys: []messages.BundleKey{retiredKey}})
	ctx := ctxT(t, time.Minute)
	const src, dst = "us-east-1", "eu-west-1"
	bad := hostileMessages(t, p, src, dst, retired)
	nc, err := p.Connect(src, "attacker")
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	for _, b := range bad {
		if _, err := js.Publish(ctx, messages.OutboxSubject(src, dst, messages.TypeInit), b.raw); err != nil {
			t.Fatalf("%s: publish to outbox: %v", b.name, err)
		}
	}
	got := deadLetters(t, ctx, nc, layout.DLQStream(src), len(bad))
	slices.Sort(got)
	if want := sortedReasons(bad); !slices.Equal(got, want) {
		t.Errorf("dead-letter reasons\n got %v\nwant %v", got, want)
	}
	dnc, _ := p.Connect(dst, "check")
	if n := streamMsgs(t, ctx, dnc, layout.InboxStream(dst)); n != 0 {
		t.Errorf("%s inbox holds %d messages; the proxy forwarded something it should have refused", dst, n)
	}
	// Publishing to a region outside the partition has no stream at all.
	if _, err := js.Publish(ctx, "mrk."+src+".out.mars-1.replication.init", bad[0].raw); err == nil {
		t.Error("publish to an outbox subject for an unknown region was accepted")
	}
}

// TestAdversarialWorker bypasses the proxy: the same hostile messages are
// written straight into the destination's inbox. The worker must refuse
// each with its reason, dead-letter it, and change no key state.
func TestAdversarialWorker(t *testing.T) {
	retired, retiredKey := retiredRSK(t, "us-east-1")
	p := mrkrepltest.New(t, mrkrepltest.Options{NoProxy: true, ExtraBundleKeys: []messages.BundleKey{retiredKey}})
	ctx := ctxT(t, time.Minute)
	const src, dst = "us-east-1", "eu-west-1"
	bad := hostileMessages(t, p, src, dst, retired)
	nc, err := p.Connect(dst, "attacker")
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	var want []string
	for _, b := range bad {
		if _, err := js.Publish(ctx, messages.InboxSubject(dst, src, messages.TypeInit), b.raw); err != nil {
			t.Fatalf("%s: publish to inbox: %v", b.name, err)
		}
		if b.atWorker != "" {
			want = append(want, string(b.atWorker))
		} else {
			want = append(want, string(b.reason))
		}
	}
	// Replay: a valid init delivered twice is one run; the same msg_id with
	// other bytes is refused.
	valid := hostileValidInit(t, p, src, dst, nil)
	replayed := hostileValidInit(t, p, src, dst, &valid)
	for _, raw := range [][]byte{valid.raw, valid.raw} {
		if _, err := js.Publish(ctx, messages.InboxSubject(dst, src, messages.TypeInit), raw); err != nil {
			t.Fatal(err)
		}
	}
	// Messages are handled concurrently: let the valid one be taken first.
	waitFor(t, ctx, func() bool { return outboxCount(t, ctx, nc, dst) >= 1 })
	if _, err := js.Publish(ctx, messages.InboxSubject(dst, src, messages.TypeInit), replayed.raw); err != nil {
		t.Fatal(err)
	}
	want = append(want, "replayed_msg_id")
	slices.Sort(want)
	got := deadLetters(t, ctx, nc, layout.DLQStream(dst), len(want))
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("dead-letter reasons\n got %v\nwant %v", got, want)
	}
	keys, err := p.Region(dst).Client.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 0 {
		t.Errorf("refused messages created keys in %s: %v", dst, keys)
	}
	// The valid init made exactly one offer, even though it arrived twice.
	waitFor(t, ctx, func() bool { return outboxCount(t, ctx, nc, dst) >= 1 })
	if n := outboxCount(t, ctx, nc, dst); n != 1 {
		t.Errorf("%s sent %d offers for one init delivered twice, want 1", dst, n)
	}
}

// outboxCount is the number of messages region's worker has published.
func outboxCount(t *testing.T, ctx context.Context, nc *nats.Conn, region string) uint64 {
	return streamMsgs(t, ctx, nc, layout.OutboxStream(region))
}

type sealed struct {
	raw           []byte
	msgID         string
	replicationID string
}

// hostileValidInit returns a correctly signed init from src for a new key;
// with reuse, it carries reuse's msg_id and replication_id (other bytes,
// same ids: what a signer reusing a msg_id would send).
func hostileValidInit(t *testing.T, p *mrkrepltest.Partition, src, dst string, reuse *sealed) sealed {
	t.Helper()
	msgID, replicationID := messages.NewID(), messages.NewID()
	if reuse != nil {
		msgID, replicationID = reuse.msgID, reuse.replicationID
	}
	now := time.Now()
	m := &messages.Message{
		Header: messages.Header{
			V: 1, Type: messages.TypeInit, MsgID: msgID, ReplicationID: replicationID,
			Partition: p.Bundle.Partition(), Src: src, Dst: dst,
			SentAt: now.UnixMilli(), ExpiresAt: now.Add(5 * time.Minute).UnixMilli(),
		},
		Init: &messages.Init{KeyID: messages.NewKeyID(), KeySpec: "SYMMETRIC_DEFAULT", KeyUsage: "ENCRYPT_DECRYPT", Version: 1, PrimaryRegion: src},
	}
	raw, err := messages.Seal(m, p.Region(src).HSM.Signer())
	if err != nil {
		t.Fatal(err)
	}
	return sealed{raw, msgID, replicationID}
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(t *testing.T, ctx context.Context, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatal("condition not reached before deadline")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// retiredRSK makes an RSK for region whose bundle entry expired an hour ago.
func retiredRSK(t *testing.T, region string) (crypto.Signer, messages.BundleKey) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	kid, err := messages.KID(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	return k, messages.BundleKey{Region: region, KID: kid, PublicKey: k.Public(),
		NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)}
}

// highS rewrites an envelope's ECDSA signature (r, s) as (r, n−s): still a
// valid signature, but not the one encoding the protocol accepts.
func highS(t *testing.T, raw []byte) []byte {
	t.Helper()
	out := slices.Clone(raw)
	sig := out[len(out)-96:]
	n := elliptic.P384().Params().N
	s := new(big.Int).SetBytes(sig[48:])
	s.Sub(n, s)
	s.FillBytes(sig[48:])
	return out
}

// TestAdversarialReflected sends A's genuine message back towards A: via
// the proxy (written into B's outbox, as if B had sent it) and straight into
// A's inbox. Both are refused: the subject does not agree with the payload,
// and A is not the message's destination.
func TestAdversarialReflected(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{})
	ctx := ctxT(t, time.Minute)
	const a, b = "us-east-1", "eu-west-1"
	msg := hostileValidInit(t, p, a, b, nil)
	bnc, _ := p.Connect(b, "attacker")
	bjs, _ := jetstream.New(bnc)
	if _, err := bjs.Publish(ctx, messages.OutboxSubject(b, a, messages.TypeInit), msg.raw); err != nil {
		t.Fatal(err)
	}
	if got := deadLetters(t, ctx, bnc, layout.DLQStream(b), 1); got[0] != string(messages.ReasonSubject) {
		t.Errorf("proxy: reflected message refused as %v, want %s", got, messages.ReasonSubject)
	}
	anc, _ := p.Connect(a, "attacker")
	ajs, _ := jetstream.New(anc)
	if _, err := ajs.Publish(ctx, messages.InboxSubject(a, b, messages.TypeInit), msg.raw); err != nil {
		t.Fatal(err)
	}
	if got := deadLetters(t, ctx, anc, layout.DLQStream(a), 1); got[0] != string(messages.ReasonWrongDst) {
		t.Errorf("worker: reflected message refused as %v, want %s", got, messages.ReasonWrongDst)
	}
	if n := streamMsgs(t, ctx, anc, layout.InboxStream(a)); n != 1 {
		t.Errorf("%s inbox holds %d messages, want only the one injected directly", a, n)
	}
}

// TestReplayedMsgIDInRun: within a replication, a message carrying the
// msg_id of a message the run already accepted, with other bytes, is
// refused as replayed_msg_id, at the source (an offer) and at the
// destination (a material); a message of the same type with a fresh msg_id
// is refused as not fitting the run's state. The run records keep each
// accepted message's msg_id (the check no longer needs the replay cache
// for the four run messages). Nothing changes in either region.
func TestReplayedMsgIDInRun(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{})
	ctx := ctxT(t, time.Minute)
	const a, b = "us-east-1", "eu-west-1"
	key, rep := newReplicatedKey(t, ctx, p.Region(a).Client, b)
	nc, err := p.Connect(a, "check")
	if err != nil {
		t.Fatal(err)
	}
	bnc, err := p.Connect(b, "check")
	if err != nil {
		t.Fatal(err)
	}
	// The run's offer (sent by b) and material (sent by a), from the outboxes.
	accepted := func(nc *nats.Conn, region string, typ messages.Type) *messages.Envelope {
		t.Helper()
		envs, _ := outboxMessages(t, ctx, nc, region, 0)
		for _, env := range envs {
			if env.Message.Type == typ && env.Message.ReplicationID == rep.ReplicationID {
				return env
			}
		}
		t.Fatalf("no %s of replication %s in %s's outbox", typ, rep.ReplicationID, region)
		return nil
	}
	offer := accepted(bnc, b, messages.TypeOffer)
	material := accepted(nc, a, messages.TypeMaterial)

	// resealed returns env's message with a later sent_at (other bytes),
	// the same or a fresh msg_id, signed again by signer.
	resealed := func(env *messages.Envelope, sameID bool, signer crypto.Signer) []byte {
		t.Helper()
		m := env.Message
		m.SentAt++
		if !sameID {
			m.MsgID = messages.NewID()
		}
		raw, err := messages.Seal(&m, signer)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	for _, tc := range []struct {
		name   string
		to     string
		conn   *nats.Conn
		raw    []byte
		reason string
	}{
		{"offer with the accepted offer's msg_id", a, nc, resealed(offer, true, p.Region(b).HSM.Signer()), "replayed_msg_id"},
		{"offer with a fresh msg_id", a, nc, resealed(offer, false, p.Region(b).HSM.Signer()), "state_mismatch"},
		{"material with the accepted material's msg_id", b, bnc, resealed(material, true, p.Region(a).HSM.Signer()), "replayed_msg_id"},
		{"material with a fresh msg_id", b, bnc, resealed(material, false, p.Region(a).HSM.Signer()), "state_mismatch"},
	} {
		from := b
		if tc.to == b {
			from = a
		}
		typ := messages.TypeOffer
		if tc.to == b {
			typ = messages.TypeMaterial
		}
		js, _ := jetstream.New(tc.conn)
		if _, err := js.Publish(ctx, messages.InboxSubject(tc.to, from, typ), tc.raw); err != nil {
			t.Fatal(err)
		}
		if comp, reason := deadLetterOf(t, ctx, tc.conn, layout.DLQStream(tc.to), tc.raw); comp != "worker" || reason != tc.reason {
			t.Errorf("%s: refused by %q as %q, want worker, %s", tc.name, comp, reason, tc.reason)
		}
	}
	// Both ends still see one completed run and one replica.
	for _, r := range []string{a, b} {
		got, err := p.Region(r).Client.DescribeReplication(ctx, rep.ReplicationID)
		if err != nil || got.State != api.StateCompleted {
			t.Errorf("replication in %s after the replays: %v %+v", r, err, got)
		}
	}
	k, err := p.Region(a).Client.DescribeKey(ctx, key.KeyID)
	if err != nil || len(k.Replicas) != 1 {
		t.Errorf("key in %s after the replays: %v, replicas %+v", a, err, k)
	}
}
