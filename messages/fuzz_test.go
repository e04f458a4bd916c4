package messages

import (
	"bytes"
	"testing"
	"time"
	"unicode/utf8"
)

// addVectorSeeds seeds f with every vector envelope.
func addVectorSeeds(f *testing.F) {
	for _, v := range loadVectors(f) {
		f.Add(v.raw)
	}
}

// checkRefusal fails unless err is a short *VerifyError with a known reason.
func checkRefusal(t *testing.T, err error) {
	t.Helper()
	r := ReasonOf(err)
	known := false
	for _, k := range Reasons() {
		known = known || r == k
	}
	if !known {
		t.Fatalf("error %v is not a *VerifyError with a known reason", err)
	}
	if msg := err.Error(); len(msg) > 200 || !utf8.ValidString(msg) {
		t.Fatalf("error message of %d bytes: %q", len(msg), msg)
	}
}

// FuzzParse checks that Parse never panics, refuses with a parse-stage
// reason, and accepts only what it would itself produce.
func FuzzParse(f *testing.F) {
	addVectorSeeds(f)
	f.Fuzz(func(t *testing.T, raw []byte) {
		env, err := Parse(raw)
		if err != nil {
			checkRefusal(t, err)
			if r := ReasonOf(err); !parseStage(r) {
				t.Fatalf("Parse refused with %s", r)
			}
			return
		}
		if !bytes.Equal(env.Raw, raw) || !bytes.Equal(env.Digest, Digest(raw)) {
			t.Fatal("Raw or Digest wrong")
		}
		if err := env.Message.Validate(); err != nil {
			t.Fatalf("accepted an invalid message: %v", err)
		}
		payload, err := encodePayload(&env.Message)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(raw, canonicalEnvelope(canonicalProtected(env.KID), payload, raw[len(raw)-sigSize:])) {
			t.Fatal("accepted a non-canonical envelope")
		}
	})
}

// FuzzVerify checks that Verify never panics and refuses only with a
// known reason, with the vectors' bundle and clock.
func FuzzVerify(f *testing.F) {
	addVectorSeeds(f)
	bundle := loadTestBundle(f)
	now := t0.Add(time.Second)
	f.Fuzz(func(t *testing.T, raw []byte) {
		env, err := Verify(raw, VerifyOptions{Bundle: bundle, Now: now, Receiver: regionB})
		if err != nil {
			checkRefusal(t, err)
			return
		}
		if env.Message.Dst != regionB {
			t.Fatalf("accepted a message for %s", env.Message.Dst)
		}
		if _, err := Parse(raw); err != nil {
			t.Fatalf("Verify accepted what Parse refuses: %v", err)
		}
	})
}

// FuzzPayload frames arbitrary bytes as the payload of an otherwise
// well-formed envelope, to reach the payload decoder directly. Whatever
// Parse accepts, Seal must accept and encode the same way. It is seeded
// with the payload of every message type.
func FuzzPayload(f *testing.F) {
	w := newKitWorld(f)
	for _, m := range []*Message{w.init, w.offer, w.material, w.receipt, w.failed} {
		f.Add([]byte(fieldsOf(m).enc()))
	}
	for _, lm := range w.lifecycleMessages() {
		f.Add([]byte(fieldsOf(lm.msg).enc()))
	}
	// Lists at the decoder's limit (16 items), for the fuzzer to grow.
	f.Add([]byte(fieldsOf(cloneMessage(w.handover, func(m *Message) {
		m.Handover.Versions, m.Handover.CurrentVersion = versionsUpTo(16), 16
		m.Handover.Replicas = regionNames(16)
	})).enc()))
	key := loadKey(f, regionA)
	prot := kitProtected(-35, kitKID(f, &key.PublicKey))
	sig := make([]byte, sigSize)
	sig[47], sig[95] = 1, 1 // r = s = 1: low-S, never verifies
	f.Fuzz(func(t *testing.T, payload []byte) {
		env, err := Parse(kitEnvelope(prot, cMap(), payload, sig))
		if err != nil {
			checkRefusal(t, err)
			return
		}
		m := env.Message
		if m.Src == m.Dst {
			return // Seal refuses reflected messages; Verify does too.
		}
		raw, err := Seal(&m, key)
		if err != nil {
			t.Fatalf("Parse accepted a payload Seal refuses: %v", err)
		}
		if !bytes.Equal(raw, canonicalEnvelope(prot, payload, raw[len(raw)-sigSize:])) {
			t.Fatal("Seal encodes the message differently")
		}
	})
}
