package messages

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata (keys, bundle, vectors) from the test kit")

// The fixed world of the vectors.
var (
	t0         = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	t0ms       = t0.UnixMilli()
	lifetimeMs = (10 * time.Minute).Milliseconds()
)

const (
	regionA       = "us-east-1"
	regionB       = "eu-west-1"
	regionC       = "ap-south-1"
	testPartition = "test"
	replicationID = "0123456789abcdef0123456789abcdef"
)

// kitKeySpec is one fixed RSK of the vectors.
type kitKeySpec struct {
	name, region        string
	notBefore, notAfter time.Time
	inBundle            bool
}

var (
	keysFrom  = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	keysUntil = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
)

var kitKeys = []kitKeySpec{
	{regionA, regionA, keysFrom, keysUntil, true},
	{regionB, regionB, keysFrom, keysUntil, true},
	{regionC, regionC, keysFrom, keysUntil, true},
	// retired: its window ended before t0
	{"us-east-1-retired", regionA, time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), true},
	// next: its window starts after t0
	{"us-east-1-next", regionA, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC), true},
	// outsider: a P-384 key in no bundle
	{"outsider", regionA, keysFrom, keysUntil, false},
}

// vectorFile is the JSON form of one vector in testdata/vectors.
type vectorFile struct {
	Name     string   `json:"name"`
	Comment  string   `json:"comment"`
	Envelope string   `json:"envelope"` // hex
	Now      string   `json:"now"`      // RFC 3339, the verifier's clock
	Receiver string   `json:"receiver"` // VerifyOptions.Receiver ("" = proxy)
	Subject  string   `json:"subject"`  // VerifyOptions.Subject
	Valid    bool     `json:"valid"`
	Reason   string   `json:"reason,omitempty"`  // the Reason, for refused vectors
	Digest   string   `json:"digest,omitempty"`  // hex SHA-384 of the envelope, for valid vectors
	Message  *Message `json:"message,omitempty"` // the decoded payload, for valid vectors
}

type bundleFile struct {
	Partition string          `json:"partition"`
	Regions   []string        `json:"regions"`
	Keys      []bundleKeyFile `json:"keys"`
}

type bundleKeyFile struct {
	Region    string `json:"region"`
	KID       string `json:"kid"`
	PublicKey string `json:"public_key"`
	NotBefore string `json:"not_before"`
	NotAfter  string `json:"not_after"`
}

type transcriptFile struct {
	Label            string `json:"label"`
	InitDigest       string `json:"init_digest"`
	OfferDigest      string `json:"offer_digest"`
	MaterialDigest   string `json:"material_digest"`
	TranscriptDigest string `json:"transcript_digest"`
}

// vspec describes one vector: a base message and at most one defect.
type vspec struct {
	name, comment string
	msg           *Message                                      // the payload, unless payload is set
	payload       cb                                            // raw payload override
	of            *Message                                      // the message a raw payload was built from (default init): signer, receiver, subject
	key           string                                        // signer (default: the key named like msg.Src)
	protected     cb                                            // protected header override
	unprotected   cb                                            // unprotected header override (default {})
	sig           func([]byte) []byte                           // signature defect
	frame         func(prot, unprot cb, payload, sig []byte) cb // envelope override
	post          func([]byte) []byte                           // defect on the final bytes
	now           time.Time                                     // default t0 + 1s
	receiver      *string                                       // default msg.Dst
	subject       *string                                       // default the inbox subject
	reason        Reason                                        // "" for a valid vector
}

func strp(s string) *string { return &s }

// kitWorld holds the derived keys and the positive messages.
type kitWorld struct {
	keys                                   map[string]*ecdsa.PrivateKey
	init, offer, material, receipt, failed *Message
	// The lifecycle messages: a sync A→B, the status answering it, an
	// unprompted status (pending deletion), a DELETED status, a hand-over
	// A→B and the accept answering it.
	sync, status, statusPending, statusDeleted, handover, accept *Message
	envs                                                         map[string][]byte // positive envelopes by name
}

func header(typ Type, n int, src, dst string) Header {
	return Header{
		V:             1,
		Type:          typ,
		MsgID:         fmt.Sprintf("%032x", 0xa0+n),
		ReplicationID: replicationID,
		Partition:     testPartition,
		Src:           src,
		Dst:           dst,
		SentAt:        t0ms,
		ExpiresAt:     t0ms + lifetimeMs,
	}
}

// fill returns n bytes of a recognisable pattern.
func fill(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

// cloneMessage returns a deep copy of m with f applied.
func cloneMessage(m *Message, f func(*Message)) *Message {
	c := *m
	if m.Init != nil {
		b := *m.Init
		c.Init = &b
	}
	if m.Offer != nil {
		b := *m.Offer
		c.Offer = &b
	}
	if m.Material != nil {
		b := *m.Material
		c.Material = &b
	}
	if m.Receipt != nil {
		b := *m.Receipt
		c.Receipt = &b
	}
	if m.Sync != nil {
		b := *m.Sync
		b.Versions = slices.Clone(b.Versions)
		c.Sync = &b
	}
	if m.Status != nil {
		b := *m.Status
		b.Versions = slices.Clone(b.Versions)
		b.SyncDigest = slices.Clone(b.SyncDigest)
		c.Status = &b
	}
	if m.Handover != nil {
		b := *m.Handover
		b.Versions = slices.Clone(b.Versions)
		b.Replicas = slices.Clone(b.Replicas)
		c.Handover = &b
	}
	if m.Accept != nil {
		b := *m.Accept
		b.HandoverDigest = slices.Clone(b.HandoverDigest)
		c.Accept = &b
	}
	if f != nil {
		f(&c)
	}
	return &c
}

func newKitWorld(t testing.TB) *kitWorld {
	w := &kitWorld{keys: map[string]*ecdsa.PrivateKey{}, envs: map[string][]byte{}}
	for _, k := range kitKeys {
		w.keys[k.name] = kitDeriveKey(t, k.name)
	}
	w.init = &Message{
		Header: header(TypeInit, 1, regionA, regionB),
		Init: &Init{
			KeyID:         "mrk-00112233445566778899aabbccddeeff",
			KeySpec:       "SYMMETRIC_DEFAULT",
			KeyUsage:      "ENCRYPT_DECRYPT",
			Version:       1,
			PrimaryRegion: regionA,
		},
	}
	w.envs["init"] = kitSeal(t, w.keys[regionA], fieldsOf(w.init).enc())
	w.offer = &Message{
		Header: header(TypeOffer, 2, regionB, regionA),
		Offer: &Offer{
			InitDigest: kitDigest(w.envs["init"]),
			RAKB:       kitDerivePoint(t, "rakb"),
		},
	}
	w.envs["offer"] = kitSeal(t, w.keys[regionB], fieldsOf(w.offer).enc())
	w.material = &Message{
		Header: header(TypeMaterial, 3, regionA, regionB),
		Material: &Material{
			OfferDigest: kitDigest(w.envs["offer"]),
			RAKA:        kitDerivePoint(t, "raka"),
			WrappedKey:  fill(40, 0x5a),
			Properties: Properties{
				KeySpec:     "SYMMETRIC_DEFAULT",
				KeyUsage:    "ENCRYPT_DECRYPT",
				Description: "test vector key",
			},
		},
	}
	w.envs["material"] = kitSeal(t, w.keys[regionA], fieldsOf(w.material).enc())
	w.receipt = &Message{
		Header: header(TypeReceipt, 4, regionB, regionA),
		Receipt: &Receipt{
			MaterialDigest:  kitDigest(w.envs["material"]),
			Status:          StatusOK,
			KeyConfirmation: fill(16, 0xc0),
		},
	}
	w.envs["receipt"] = kitSeal(t, w.keys[regionB], fieldsOf(w.receipt).enc())
	w.failed = cloneMessage(w.receipt, func(m *Message) {
		m.MsgID = fmt.Sprintf("%032x", 0xa5)
		m.Receipt.Status = StatusUnwrapFailed
		m.Receipt.KeyConfirmation = []byte{}
	})
	w.newLifecycle(t)
	return w
}

// lifecycleHeader is header with the exchange's own replication_id.
func lifecycleHeader(typ Type, n int, src, dst string, rid int) Header {
	h := header(typ, n, src, dst)
	h.ReplicationID = fmt.Sprintf("%032x", rid)
	return h
}

// vectorKeyID is the key of every vector.
const vectorKeyID = "mrk-00112233445566778899aabbccddeeff"

// newLifecycle builds the lifecycle messages of the vectors: each a fresh
// exchange (its own replication_id), but the accept, which shares the
// hand-over's.
func (w *kitWorld) newLifecycle(t testing.TB) {
	w.sync = &Message{
		Header: lifecycleHeader(TypeSync, 6, regionA, regionB, 0xb6),
		Sync: &Sync{
			KeyID:          vectorKeyID,
			Epoch:          3,
			PrimaryRegion:  regionA,
			CurrentVersion: 2,
			Versions:       []uint32{1, 2, 3}, // 3 staged
			Description:    "test vector key",
			AckStatusSeq:   1,
		},
	}
	w.envs["sync"] = kitSeal(t, w.keys[regionA], fieldsOf(w.sync).enc())
	w.status = &Message{
		Header: lifecycleHeader(TypeStatus, 7, regionB, regionA, 0xb7),
		Status: &Status{
			KeyID:         vectorKeyID,
			Epoch:         3,
			PrimaryRegion: regionA,
			StatusSeq:     1,
			State:         ReplicaStateEnabled,
			Versions:      []uint32{1, 2, 3},
			SyncDigest:    kitDigest(w.envs["sync"]),
		},
	}
	w.statusPending = &Message{
		Header: lifecycleHeader(TypeStatus, 8, regionB, regionA, 0xb8),
		Status: &Status{
			KeyID:         vectorKeyID,
			Epoch:         3,
			PrimaryRegion: regionA,
			StatusSeq:     2,
			State:         ReplicaStatePendingDeletion,
			Versions:      []uint32{1, 2, 3},
			DeletionDate:  t0.Add(7 * 24 * time.Hour).UnixMilli(),
		},
	}
	w.statusDeleted = &Message{
		Header: lifecycleHeader(TypeStatus, 9, regionB, regionA, 0xb9),
		Status: &Status{
			KeyID:         vectorKeyID,
			Epoch:         3,
			PrimaryRegion: regionA,
			StatusSeq:     3,
			State:         ReplicaStateDeleted,
		},
	}
	w.handover = &Message{
		Header: lifecycleHeader(TypeHandover, 10, regionA, regionB, 0xba),
		Handover: &Handover{
			KeyID:          vectorKeyID,
			Epoch:          4,
			CurrentVersion: 3,
			Versions:       []uint32{1, 2, 3},
			Replicas:       []string{regionC, regionA}, // the old primary included, the new one not
			Description:    "test vector key",
		},
	}
	w.envs["handover"] = kitSeal(t, w.keys[regionA], fieldsOf(w.handover).enc())
	w.accept = &Message{
		Header: lifecycleHeader(TypeAccept, 11, regionB, regionA, 0xba),
		Accept: &Accept{
			HandoverDigest: kitDigest(w.envs["handover"]),
			KeyID:          vectorKeyID,
			Epoch:          4,
		},
	}
}

// lifecycleMessages returns the valid lifecycle messages by vector name.
func (w *kitWorld) lifecycleMessages() []struct {
	name string
	msg  *Message
} {
	return []struct {
		name string
		msg  *Message
	}{
		{"sync", w.sync},
		{"status", w.status},
		{"status-unprompted", w.statusPending},
		{"status-deleted", w.statusDeleted},
		{"handover", w.handover},
		{"accept", w.accept},
	}
}

func kitDigest(b []byte) []byte {
	s := sha512.Sum384(b)
	return s[:]
}

func kitInbox(m *Message) string {
	return "mrk." + m.Dst + ".in." + m.Src + "." + string(m.Type)
}

func kitOutbox(m *Message) string {
	return "mrk." + m.Src + ".out." + m.Dst + "." + string(m.Type)
}

// specs returns every vector: the valid ones, then one per defect.
func (w *kitWorld) specs(t testing.TB) []vspec {
	init, offer, material, receipt := w.init, w.offer, w.material, w.receipt
	mod := func(m *Message, f func(*Message)) *Message { return cloneMessage(m, f) }
	kidA := kitKID(t, &w.keys[regionA].PublicKey)
	kidB := kitKID(t, &w.keys[regionB].PublicKey)
	initFields := fieldsOf(init)
	sortedInit := slices.Clone(initFields)
	slices.SortFunc(sortedInit, func(a, b pair) int { return bytes.Compare(a.k, b.k) })
	expiry := time.UnixMilli(init.ExpiresAt)
	nextFrom := kitKeys[4].notBefore
	retiredUntil := kitKeys[3].notAfter
	atTime := func(m *Message, sent time.Time) *Message {
		return mod(m, func(m *Message) {
			m.SentAt = sent.UnixMilli()
			m.ExpiresAt = m.SentAt + lifetimeMs
		})
	}
	offCurve := slices.Clone(offer.Offer.RAKB)
	offCurve[len(offCurve)-1] ^= 0x01
	sync, status, handover, accept := w.sync, w.status, w.handover, w.accept
	syncFields, statusFields := fieldsOf(sync), fieldsOf(status)
	handoverFields, acceptFields := fieldsOf(handover), fieldsOf(accept)
	// withBodyField returns f with the body named body changed by g.
	withBodyField := func(f fields, body string, g func(fields) fields) cb {
		return f.set(body, g(fieldsOfBody(t, f.get(body))).enc()).enc()
	}
	extraField := func(b fields) fields { return b.set("origin", cText("x")) }

	return []vspec{
		// Valid.
		{name: "init", comment: "replication.init, A to B", msg: init},
		{name: "offer", comment: "replication.offer, B to A, answering the init vector", msg: offer},
		{name: "material", comment: "replication.material, A to B, answering the offer vector", msg: material},
		{name: "receipt", comment: "replication.receipt with status ok, B to A, answering the material vector", msg: receipt},
		{name: "receipt-failed", comment: "replication.receipt with an error status and no key confirmation", msg: w.failed},
		{name: "receipt-agreement-key-lost", comment: "replication.receipt: the destination lost its agreement key (the source starts a fresh run)",
			msg: mod(w.failed, func(m *Message) { m.Receipt.Status = StatusAgreementKeyLost })},
		{name: "proxy-view", comment: "the init vector as the proxy checks it: no receiver, outbox subject", msg: init,
			receiver: strp(""), subject: strp(kitOutbox(init))},
		{name: "expiry-at-skew-limit", comment: "now is exactly expires_at + 30s", msg: init, now: expiry.Add(DefaultSkew)},
		{name: "sent-at-skew-limit", comment: "sent_at is exactly now + 30s", msg: init, now: t0.Add(-DefaultSkew)},
		{name: "kid-at-not-before", comment: "sent_at is exactly the kid's not_before", msg: atTime(init, nextFrom),
			key: "us-east-1-next", now: nextFrom},
		{name: "kid-at-not-after", comment: "sent_at is exactly the kid's not_after", msg: atTime(init, retiredUntil),
			key: "us-east-1-retired", now: retiredUntil},
		{name: "sync", comment: "key.sync, A to B: epoch 3, versions 1 2 3 (3 staged), current 2", msg: sync},
		{name: "status", comment: "key.status ENABLED, B to A, answering the sync vector (sync_digest set)", msg: status},
		{name: "status-unprompted", comment: "key.status PENDING_DELETION with a deletion date, sent unprompted (no sync_digest)",
			msg: w.statusPending},
		{name: "status-deleted", comment: "key.status DELETED: no versions, no deletion date", msg: w.statusDeleted},
		{name: "handover", comment: "primary.handover, A to B: epoch 4, replicas ap-south-1 and us-east-1", msg: handover},
		{name: "accept", comment: "primary.accept, B to A, answering the handover vector", msg: accept},

		// Size and envelope structure.
		{name: "too-large", comment: "envelope larger than 16 KiB", reason: ReasonTooLarge,
			msg: mod(material, func(m *Message) { m.Material.Properties.Description = strings.Repeat("x", MaxMessageSize) })},
		{name: "empty", comment: "no bytes at all", msg: init, reason: ReasonMalformed,
			post: func([]byte) []byte { return []byte{} }},
		{name: "trailing-byte", comment: "a 0x00 after the envelope", msg: init, reason: ReasonMalformed,
			post: func(b []byte) []byte { return append(b, 0x00) }},
		{name: "truncated", comment: "last byte missing", msg: init, reason: ReasonMalformed,
			post: func(b []byte) []byte { return b[:len(b)-1] }},
		{name: "truncated-half", comment: "first half only", msg: init, reason: ReasonMalformed,
			post: func(b []byte) []byte { return b[:len(b)/2] }},
		{name: "untagged", comment: "COSE_Sign1 without tag 18", msg: init, reason: ReasonMalformed,
			frame: func(p, u cb, pl, s []byte) cb { return cArray(cBytes(p), u, cBytes(pl), cBytes(s)) }},
		{name: "wrong-tag", comment: "tag 17 (COSE_Mac0) instead of 18", msg: init, reason: ReasonMalformed,
			frame: func(p, u cb, pl, s []byte) cb { return cTag(17, cArray(cBytes(p), u, cBytes(pl), cBytes(s))) }},
		{name: "five-items", comment: "a fifth array item", msg: init, reason: ReasonMalformed,
			frame: func(p, u cb, pl, s []byte) cb { return cTag(18, cArray(cBytes(p), u, cBytes(pl), cBytes(s), cNull)) }},
		{name: "detached-payload", comment: "payload nil (detached); the signature covers the real payload", msg: init,
			reason: ReasonMalformed,
			frame:  func(p, u cb, _, s []byte) cb { return cTag(18, cArray(cBytes(p), u, cNull, cBytes(s))) }},
		{name: "payload-not-bstr", comment: "payload is a map, not a byte string wrapping one", msg: init,
			reason: ReasonMalformed,
			frame:  func(p, u cb, pl, s []byte) cb { return cTag(18, cArray(cBytes(p), u, pl, cBytes(s))) }},
		{name: "unprotected-not-empty", comment: "kid repeated in the unprotected header", msg: init,
			reason: ReasonMalformed, unprotected: cMap(pair{cUint(4), cBytes(kidA)})},
		{name: "signature-short", comment: "95-byte signature", msg: init, reason: ReasonMalformed,
			sig: func(s []byte) []byte { return s[:95] }},

		// Protected header.
		{name: "alg-es256", comment: "alg -7 (ES256)", msg: init, reason: ReasonBadAlgorithm,
			protected: kitProtected(-7, kidA)},
		{name: "alg-missing", comment: "protected header without alg", msg: init, reason: ReasonBadAlgorithm,
			protected: cMap(pair{cUint(4), cBytes(kidA)})},
		{name: "alg-text", comment: `alg "ES384" as text`, msg: init, reason: ReasonBadAlgorithm,
			protected: cMap(pair{cUint(1), cText("ES384")}, pair{cUint(4), cBytes(kidA)})},
		{name: "protected-empty", comment: "zero-length protected header", msg: init, reason: ReasonBadAlgorithm,
			protected: cb{}},
		{name: "protected-unknown-label", comment: "content type (3) in the protected header", msg: init,
			reason:    ReasonMalformed,
			protected: cMap(pair{cUint(1), cInt(-35)}, pair{cUint(3), cText("application/cbor")}, pair{cUint(4), cBytes(kidA)})},
		{name: "kid-missing", comment: "protected header without kid", msg: init, reason: ReasonMalformed,
			protected: cMap(pair{cUint(1), cInt(-35)})},
		{name: "kid-short", comment: "16-byte kid", msg: init, reason: ReasonMalformed,
			protected: kitProtected(-35, kidA[:16])},
		{name: "protected-nonminimal-alg", comment: "alg -35 with a 2-byte argument", msg: init,
			reason:    ReasonNonCanonical,
			protected: cMap(pair{cUint(1), cb(kitHeadWide(1, 34, 2))}, pair{cUint(4), cBytes(kidA)})},
		{name: "protected-unsorted", comment: "kid before alg", msg: init, reason: ReasonNonCanonical,
			protected: cMapInOrder(pair{cUint(4), cBytes(kidA)}, pair{cUint(1), cInt(-35)})},
		{name: "unprotected-nonminimal", comment: "empty unprotected map with a 1-byte length argument", msg: init,
			reason: ReasonNonCanonical, unprotected: cb{0xb8, 0x00}},
		{name: "envelope-nonminimal-length", comment: "payload byte string with a 4-byte length argument", msg: init,
			reason: ReasonNonCanonical,
			frame: func(p, u cb, pl, s []byte) cb {
				wide := append(kitHeadWide(2, uint64(len(pl)), 4), pl...)
				return cTag(18, cArray(cBytes(p), u, wide, cBytes(s)))
			}},
		{name: "high-s", comment: "the other valid signature (r, n-s)", msg: init, reason: ReasonNonCanonical,
			sig: kitHighS},

		// Payload encoding.
		{name: "payload-unknown-field", comment: `extra top-level field "comment"`, reason: ReasonMalformed,
			payload: initFields.set("comment", cText("hi")).enc()},
		{name: "payload-unknown-body-field", comment: `extra field "origin" in the init body`, reason: ReasonMalformed,
			payload: initFields.set("init", cMap(append(slices.Clone(fieldsOfBody(t, initFields.get("init"))),
				pair{cText("origin"), cText("x")})...)).enc()},
		{name: "payload-duplicate-key", comment: `"v" twice`, reason: ReasonMalformed,
			payload: cMapInOrder(slices.Insert(slices.Clone(sortedInit), 1, sortedInit[0])...)},
		{name: "payload-indefinite-map", comment: "indefinite-length top-level map", reason: ReasonMalformed,
			payload: cMapIndef(sortedInit...)},
		{name: "payload-tag", comment: "sent_at wrapped in tag 1", reason: ReasonMalformed,
			payload: initFields.set("sent_at", cTag(1, cInt(t0.Unix()))).enc()},
		{name: "payload-wrong-type", comment: "msg_id as a byte string", reason: ReasonMalformed,
			payload: initFields.set("msg_id", cBytes([]byte(init.MsgID))).enc()},
		{name: "payload-float", comment: "v as the float 1.0", reason: ReasonMalformed,
			payload: initFields.set("v", cb{0xf9, 0x3c, 0x00}).enc()},
		{name: "payload-negative-version", comment: "init.version -1", reason: ReasonMalformed,
			payload: initFields.set("init", fields(fieldsOfBody(t, initFields.get("init"))).set("version", cInt(-1)).enc()).enc()},
		{name: "payload-invalid-utf8", comment: "src is not UTF-8", reason: ReasonMalformed,
			payload: initFields.set("src", cb{0x62, 0xff, 0xfe}).enc()},
		{name: "payload-not-map", comment: "payload is an array", reason: ReasonMalformed,
			payload: cArray(cUint(1))},
		{name: "payload-unsorted", comment: "top-level keys in reverse order", reason: ReasonNonCanonical,
			payload: cMapInOrder(reversed(sortedInit)...)},
		{name: "payload-nonminimal-int", comment: "v = 1 with a 1-byte argument", reason: ReasonNonCanonical,
			payload: initFields.set("v", cb{0x18, 0x01}).enc()},
		{name: "payload-nonminimal-length", comment: "type with a 1-byte length argument", reason: ReasonNonCanonical,
			payload: initFields.set("type", append(kitHeadWide(3, uint64(len(TypeInit)), 1), TypeInit...)).enc()},
		{name: "payload-missing-field", comment: "no partition: not the encoding of any message", reason: ReasonNonCanonical,
			payload: initFields.del("partition").enc()},
		{name: "payload-null-body", comment: "offer: null next to the init body", reason: ReasonNonCanonical,
			payload: initFields.set("offer", cNull).enc()},

		// Payload content.
		{name: "v2", comment: "v = 2", reason: ReasonBadVersion, msg: mod(init, func(m *Message) { m.V = 2 })},
		{name: "v0", comment: "v = 0", reason: ReasonBadVersion, msg: mod(init, func(m *Message) { m.V = 0 })},
		{name: "two-bodies", comment: "init and offer bodies", reason: ReasonMalformed,
			msg: mod(init, func(m *Message) { m.Offer = offer.Offer })},
		{name: "no-body", comment: "no body", reason: ReasonMalformed, msg: mod(init, func(m *Message) { m.Init = nil })},
		{name: "body-type-mismatch", comment: "type replication.offer with an init body", reason: ReasonMalformed,
			msg: mod(init, func(m *Message) { m.Type = TypeOffer })},
		{name: "body-type-mismatch-init", comment: "type replication.init with a material body", reason: ReasonMalformed,
			msg: mod(material, func(m *Message) { m.Type = TypeInit })},
		{name: "unknown-type", comment: "type replication.cancel", reason: ReasonMalformed,
			msg: mod(init, func(m *Message) { m.Type = "replication.cancel" })},
		{name: "msg-id-uppercase", comment: "msg_id in uppercase hex", reason: ReasonMalformed,
			msg: mod(init, func(m *Message) { m.MsgID = strings.ToUpper(m.MsgID) })},
		{name: "replication-id-short", comment: "replication_id of 31 digits", reason: ReasonMalformed,
			msg: mod(init, func(m *Message) { m.ReplicationID = m.ReplicationID[:31] })},
		{name: "key-id-bad", comment: "key_id without the mrk- prefix", reason: ReasonMalformed,
			msg: mod(init, func(m *Message) { m.Init.KeyID = "key-00112233445566778899aabbccddeeff" })},
		{name: "key-version-0", comment: "material version 0", reason: ReasonMalformed,
			msg: mod(init, func(m *Message) { m.Init.Version = 0 })},
		{name: "region-name-bad", comment: "dst with uppercase letters", reason: ReasonMalformed,
			msg: mod(init, func(m *Message) { m.Dst = "EU-WEST-1" })},
		{name: "partition-name-bad", comment: "partition with a dot", reason: ReasonMalformed,
			msg: mod(init, func(m *Message) { m.Partition = "te.st" })},
		{name: "expires-before-sent", comment: "expires_at = sent_at", reason: ReasonMalformed,
			msg: mod(init, func(m *Message) { m.ExpiresAt = m.SentAt })},
		{name: "lifetime-too-long", comment: "expires_at 24h + 1ms after sent_at", reason: ReasonMalformed,
			msg: mod(init, func(m *Message) { m.ExpiresAt = m.SentAt + (24 * time.Hour).Milliseconds() + 1 })},
		{name: "digest-short", comment: "47-byte init_digest", reason: ReasonMalformed,
			msg: mod(offer, func(m *Message) { m.Offer.InitDigest = m.Offer.InitDigest[:47] })},
		{name: "rak-not-on-curve", comment: "rakb with its last bit flipped", reason: ReasonMalformed,
			msg: mod(offer, func(m *Message) { m.Offer.RAKB = offCurve })},
		{name: "rak-compressed", comment: "rakb as a compressed point", reason: ReasonMalformed,
			msg: mod(offer, func(m *Message) {
				p := m.Offer.RAKB
				m.Offer.RAKB = append([]byte{0x02 | p[96]&1}, p[1:49]...)
			})},
		{name: "wrapped-key-length", comment: "39-byte wrapped_key", reason: ReasonMalformed,
			msg: mod(material, func(m *Message) { m.Material.WrappedKey = m.Material.WrappedKey[:39] })},
		{name: "receipt-ok-no-confirmation", comment: "status ok without key confirmation", reason: ReasonMalformed,
			msg: mod(receipt, func(m *Message) { m.Receipt.KeyConfirmation = []byte{} })},
		{name: "receipt-failed-with-confirmation", comment: "error status with a key confirmation",
			reason: ReasonMalformed,
			msg:    mod(w.failed, func(m *Message) { m.Receipt.KeyConfirmation = fill(16, 0xc0) })},
		{name: "receipt-unknown-status", comment: `status "maybe"`, reason: ReasonMalformed,
			msg: mod(w.failed, func(m *Message) { m.Receipt.Status = "maybe" })},

		// Lifecycle messages: one defect each on the sync, status, handover and accept vectors.
		{name: "two-bodies-lifecycle", comment: "handover and accept bodies", reason: ReasonMalformed,
			msg: mod(handover, func(m *Message) { m.Accept = accept.Accept })},
		{name: "body-type-mismatch-sync", comment: "type key.sync with a status body", reason: ReasonMalformed,
			msg: mod(status, func(m *Message) { m.Type = TypeSync })},
		{name: "sync-unknown-field", comment: `extra field "origin" in the sync body`, reason: ReasonMalformed,
			of: sync, payload: withBodyField(syncFields, "sync", extraField)},
		{name: "status-unknown-field", comment: `extra field "origin" in the status body`, reason: ReasonMalformed,
			of: status, payload: withBodyField(statusFields, "status", extraField)},
		{name: "handover-unknown-field", comment: `extra field "origin" in the handover body`, reason: ReasonMalformed,
			of: handover, payload: withBodyField(handoverFields, "handover", extraField)},
		{name: "accept-unknown-field", comment: `extra field "origin" in the accept body`, reason: ReasonMalformed,
			of: accept, payload: withBodyField(acceptFields, "accept", extraField)},
		{name: "sync-versions-negative", comment: "sync.versions 1 -1 2 3", reason: ReasonMalformed,
			of: sync, payload: withBodyField(syncFields, "sync", func(b fields) fields {
				return b.set("versions", cArray(cUint(1), cInt(-1), cUint(2), cUint(3)))
			})},
		{name: "sync-versions-not-array", comment: "sync.versions as the single uint 2", reason: ReasonMalformed,
			of: sync, payload: withBodyField(syncFields, "sync", func(b fields) fields { return b.set("versions", cUint(2)) })},
		{name: "handover-replicas-indefinite", comment: "handover.replicas as an indefinite-length array",
			reason: ReasonMalformed,
			of:     handover, payload: withBodyField(handoverFields, "handover", func(b fields) fields {
				return b.set("replicas", cArrayIndef(cText(regionC), cText(regionA)))
			})},
		{name: "sync-versions-nonminimal", comment: "sync.versions with 1 written with a 1-byte argument",
			reason: ReasonNonCanonical,
			of:     sync, payload: withBodyField(syncFields, "sync", func(b fields) fields {
				return b.set("versions", cArray(cb{0x18, 0x01}, cUint(2), cUint(3)))
			})},
		{name: "status-unsorted", comment: "status body keys in reverse order", reason: ReasonNonCanonical,
			of: status, payload: statusFields.set("status", cMapInOrder(reversed(sortedPairs(fieldsOfBody(t, statusFields.get("status"))))...)).enc()},
		{name: "sync-key-id-bad", comment: "sync.key_id without the mrk- prefix", reason: ReasonMalformed,
			msg: mod(sync, func(m *Message) { m.Sync.KeyID = "key-00112233445566778899aabbccddeeff" })},
		{name: "sync-epoch-0", comment: "sync.epoch 0", reason: ReasonMalformed,
			msg: mod(sync, func(m *Message) { m.Sync.Epoch = 0 })},
		{name: "sync-primary-bad", comment: "sync.primary_region empty", reason: ReasonMalformed,
			msg: mod(sync, func(m *Message) { m.Sync.PrimaryRegion = "" })},
		{name: "sync-description-too-long", comment: "sync.description of 8193 bytes", reason: ReasonMalformed,
			msg: mod(sync, func(m *Message) { m.Sync.Description = strings.Repeat("d", MaxDescriptionSize+1) })},
		{name: "sync-versions-empty", comment: "sync.versions empty", reason: ReasonMalformed,
			msg: mod(sync, func(m *Message) { m.Sync.Versions = []uint32{} })},
		{name: "sync-version-0", comment: "sync.versions 0 1 2 3", reason: ReasonMalformed,
			msg: mod(sync, func(m *Message) { m.Sync.Versions = []uint32{0, 1, 2, 3} })},
		{name: "sync-versions-unsorted", comment: "sync.versions 2 1 3", reason: ReasonMalformed,
			msg: mod(sync, func(m *Message) { m.Sync.Versions = []uint32{2, 1, 3} })},
		{name: "sync-versions-duplicate", comment: "sync.versions 1 2 2 3", reason: ReasonMalformed,
			msg: mod(sync, func(m *Message) { m.Sync.Versions = []uint32{1, 2, 2, 3} })},
		{name: "sync-current-not-listed", comment: "sync.current_version 4, versions 1 2 3", reason: ReasonMalformed,
			msg: mod(sync, func(m *Message) { m.Sync.CurrentVersion = 4 })},
		{name: "sync-current-0", comment: "sync.current_version 0", reason: ReasonMalformed,
			msg: mod(sync, func(m *Message) { m.Sync.CurrentVersion = 0 })},
		{name: "status-key-id-bad", comment: "status.key_id in uppercase hex", reason: ReasonMalformed,
			msg: mod(status, func(m *Message) { m.Status.KeyID = "mrk-00112233445566778899AABBCCDDEEFF" })},
		{name: "status-primary-bad", comment: "status.primary_region with an underscore", reason: ReasonMalformed,
			msg: mod(status, func(m *Message) { m.Status.PrimaryRegion = "us_east_1" })},
		{name: "status-unknown-state", comment: `status.state "ACTIVE"`, reason: ReasonMalformed,
			msg: mod(status, func(m *Message) { m.Status.State = "ACTIVE" })},
		{name: "status-state-lowercase", comment: `status.state "enabled"`, reason: ReasonMalformed,
			msg: mod(status, func(m *Message) { m.Status.State = "enabled" })},
		{name: "status-enabled-with-deletion-date", comment: "status ENABLED with a deletion date", reason: ReasonMalformed,
			msg: mod(status, func(m *Message) { m.Status.DeletionDate = w.statusPending.Status.DeletionDate })},
		{name: "status-pending-without-deletion-date", comment: "status PENDING_DELETION with deletion_date 0",
			reason: ReasonMalformed, msg: mod(w.statusPending, func(m *Message) { m.Status.DeletionDate = 0 })},
		{name: "status-deletion-date-negative", comment: "status PENDING_DELETION with deletion_date -1",
			reason: ReasonMalformed, msg: mod(w.statusPending, func(m *Message) { m.Status.DeletionDate = -1 })},
		{name: "status-deleted-with-versions", comment: "status DELETED with versions 1 2 3", reason: ReasonMalformed,
			msg: mod(w.statusDeleted, func(m *Message) { m.Status.Versions = []uint32{1, 2, 3} })},
		{name: "status-deleted-with-deletion-date", comment: "status DELETED with a deletion date", reason: ReasonMalformed,
			msg: mod(w.statusDeleted, func(m *Message) { m.Status.DeletionDate = w.statusPending.Status.DeletionDate })},
		{name: "status-enabled-no-versions", comment: "status ENABLED with no versions", reason: ReasonMalformed,
			msg: mod(status, func(m *Message) { m.Status.Versions = []uint32{} })},
		{name: "status-pending-no-versions", comment: "status PENDING_DELETION with no versions", reason: ReasonMalformed,
			msg: mod(w.statusPending, func(m *Message) { m.Status.Versions = []uint32{} })},
		{name: "status-versions-unsorted", comment: "status.versions 1 3 2", reason: ReasonMalformed,
			msg: mod(status, func(m *Message) { m.Status.Versions = []uint32{1, 3, 2} })},
		{name: "status-sync-digest-short", comment: "47-byte sync_digest", reason: ReasonMalformed,
			msg: mod(status, func(m *Message) { m.Status.SyncDigest = m.Status.SyncDigest[:47] })},
		{name: "status-sync-digest-long", comment: "49-byte sync_digest", reason: ReasonMalformed,
			msg: mod(status, func(m *Message) { m.Status.SyncDigest = append(m.Status.SyncDigest, 0) })},
		{name: "handover-key-id-bad", comment: "handover.key_id of 31 hex digits", reason: ReasonMalformed,
			msg: mod(handover, func(m *Message) { m.Handover.KeyID = m.Handover.KeyID[:35] })},
		{name: "handover-epoch-0", comment: "handover.epoch 0", reason: ReasonMalformed,
			msg: mod(handover, func(m *Message) { m.Handover.Epoch = 0 })},
		{name: "handover-description-too-long", comment: "handover.description of 8193 bytes", reason: ReasonMalformed,
			msg: mod(handover, func(m *Message) { m.Handover.Description = strings.Repeat("d", MaxDescriptionSize+1) })},
		{name: "handover-replicas-empty", comment: "handover.replicas empty", reason: ReasonMalformed,
			msg: mod(handover, func(m *Message) { m.Handover.Replicas = []string{} })},
		{name: "handover-replicas-unsorted", comment: "handover.replicas us-east-1 ap-south-1", reason: ReasonMalformed,
			msg: mod(handover, func(m *Message) { m.Handover.Replicas = []string{regionA, regionC} })},
		{name: "handover-replicas-duplicate", comment: "handover.replicas ap-south-1 ap-south-1 us-east-1",
			reason: ReasonMalformed,
			msg:    mod(handover, func(m *Message) { m.Handover.Replicas = []string{regionC, regionC, regionA} })},
		{name: "handover-replica-name-bad", comment: "handover.replicas with an empty name", reason: ReasonMalformed,
			msg: mod(handover, func(m *Message) { m.Handover.Replicas = []string{"", regionC, regionA} })},
		{name: "handover-versions-empty", comment: "handover.versions empty", reason: ReasonMalformed,
			msg: mod(handover, func(m *Message) { m.Handover.Versions = []uint32{} })},
		{name: "handover-versions-duplicate", comment: "handover.versions 1 1 3", reason: ReasonMalformed,
			msg: mod(handover, func(m *Message) { m.Handover.Versions = []uint32{1, 1, 3} })},
		{name: "handover-current-not-listed", comment: "handover.current_version 2, versions 1 3", reason: ReasonMalformed,
			msg: mod(handover, func(m *Message) { m.Handover.CurrentVersion, m.Handover.Versions = 2, []uint32{1, 3} })},
		{name: "accept-digest-short", comment: "47-byte handover_digest", reason: ReasonMalformed,
			msg: mod(accept, func(m *Message) { m.Accept.HandoverDigest = m.Accept.HandoverDigest[:47] })},
		{name: "accept-digest-empty", comment: "empty handover_digest", reason: ReasonMalformed,
			msg: mod(accept, func(m *Message) { m.Accept.HandoverDigest = nil })},
		{name: "accept-key-id-bad", comment: "accept.key_id empty", reason: ReasonMalformed,
			msg: mod(accept, func(m *Message) { m.Accept.KeyID = "" })},
		{name: "accept-epoch-0", comment: "accept.epoch 0", reason: ReasonMalformed,
			msg: mod(accept, func(m *Message) { m.Accept.Epoch = 0 })},
		{name: "subject-lifecycle-type", comment: "a key.sync on the inbox subject of key.status", msg: sync,
			reason: ReasonSubject, subject: strp("mrk.eu-west-1.in.us-east-1.key.status")},

		// Signature and kid.
		{name: "unknown-kid", comment: "signed by a key in no bundle", msg: init, key: "outsider",
			reason: ReasonUnknownKID},
		{name: "kid-of-other-key", comment: "kid of B's RSK, signed by A's", msg: init, reason: ReasonBadSignature,
			protected: kitProtected(-35, kidB)},
		{name: "signature-bit-flip", comment: "lowest bit of r flipped", msg: init, reason: ReasonBadSignature,
			sig: func(s []byte) []byte { s = slices.Clone(s); s[47] ^= 1; return s }},
		{name: "signature-zero", comment: "r = s = 0", msg: init, reason: ReasonBadSignature,
			sig: func(s []byte) []byte { return make([]byte, len(s)) }},
		{name: "payload-spliced", comment: "a valid signature over another payload (dst changed)",
			msg: init, reason: ReasonBadSignature,
			frame: func(p, u cb, _, s []byte) cb {
				other := fieldsOf(mod(init, func(m *Message) { m.Dst = regionC })).enc()
				return cTag(18, cArray(cBytes(p), u, cBytes(other), cBytes(s)))
			}},
		{name: "kid-wrong-region", comment: "src us-east-1, signed by eu-west-1's RSK", msg: init, key: regionB,
			reason: ReasonKIDWrongRegion},
		{name: "kid-retired", comment: "sent_at after the kid's not_after", msg: init, key: "us-east-1-retired",
			reason: ReasonKIDNotValid},
		{name: "kid-not-yet-valid", comment: "sent_at before the kid's not_before", msg: init, key: "us-east-1-next",
			reason: ReasonKIDNotValid},
		{name: "kid-retired-1ms", comment: "sent_at 1 ms after the kid's not_after",
			msg: atTime(init, retiredUntil.Add(time.Millisecond)), key: "us-east-1-retired",
			now: retiredUntil, reason: ReasonKIDNotValid},

		// Addressing and time.
		{name: "wrong-partition", comment: "partition other", reason: ReasonWrongPartition,
			msg: mod(init, func(m *Message) { m.Partition = "other" })},
		{name: "unknown-region", comment: "dst sa-east-1 is not in the partition", reason: ReasonUnknownRegion,
			msg: mod(init, func(m *Message) { m.Dst = "sa-east-1" })},
		{name: "reflected", comment: "src = dst, checked by the proxy (no receiver)", reason: ReasonReflected,
			msg: mod(init, func(m *Message) { m.Dst = m.Src }), receiver: strp("")},
		{name: "reflected-to-receiver", comment: "src = dst = receiver", reason: ReasonReflected,
			msg: mod(init, func(m *Message) { m.Dst = m.Src })},
		{name: "wrong-dst", comment: "for eu-west-1, received by ap-south-1", msg: init, receiver: strp(regionC),
			reason: ReasonWrongDst},
		{name: "expired", comment: "now is expires_at + 30s + 1ms", msg: init,
			now: expiry.Add(DefaultSkew + time.Millisecond), reason: ReasonExpired},
		{name: "from-future", comment: "sent_at is now + 30s + 1ms", msg: init,
			now: t0.Add(-DefaultSkew - time.Millisecond), reason: ReasonFromFuture},
		{name: "subject-wrong-type", comment: "inbox subject of an offer", msg: init, reason: ReasonSubject,
			subject: strp("mrk.eu-west-1.in.us-east-1.replication.offer")},
		{name: "subject-wrong-direction", comment: "outbox subject with src and dst swapped", msg: init,
			reason: ReasonSubject, subject: strp("mrk.eu-west-1.out.us-east-1.replication.init")},
	}
}

// sortedPairs returns p sorted by encoded key, as cMap writes them.
func sortedPairs(p []pair) []pair {
	s := slices.Clone(p)
	slices.SortFunc(s, func(a, b pair) int { return bytes.Compare(a.k, b.k) })
	return s
}

func reversed(p []pair) []pair {
	r := slices.Clone(p)
	slices.Reverse(r)
	return r
}

// fieldsOfBody splits an encoded body map (as built by cMap in fieldsOf)
// back into pairs; it knows only the definite-length maps of text keys
// and simple values (and arrays of them) that fieldsOf writes.
func fieldsOfBody(t testing.TB, m cb) []pair {
	t.Helper()
	n, rest := kitReadHead(t, m)
	out := make([]pair, 0, n)
	for range n {
		k, r := kitSplitItem(t, rest)
		v, r2 := kitSplitItem(t, r)
		out = append(out, pair{k, v})
		rest = r2
	}
	return out
}

func kitReadHead(t testing.TB, b []byte) (uint64, []byte) {
	t.Helper()
	ai := b[0] & 0x1f
	switch {
	case ai < 24:
		return uint64(ai), b[1:]
	case ai == 24:
		return uint64(b[1]), b[2:]
	case ai == 25:
		return uint64(binary.BigEndian.Uint16(b[1:])), b[3:]
	case ai == 26:
		return uint64(binary.BigEndian.Uint32(b[1:])), b[5:]
	case ai == 27:
		return binary.BigEndian.Uint64(b[1:]), b[9:]
	}
	t.Fatalf("kit: unsupported head %#x", b[0])
	return 0, nil
}

// kitSplitItem splits off the first item (ints, strings, arrays and maps of
// those).
func kitSplitItem(t testing.TB, b []byte) (cb, []byte) {
	t.Helper()
	mt := b[0] >> 5
	n, rest := kitReadHead(t, b)
	switch mt {
	case 0, 1:
		return b[:len(b)-len(rest)], rest
	case 2, 3:
		end := len(b) - len(rest) + int(n)
		return b[:end], b[end:]
	case 4:
		r := rest
		for range n {
			_, r = kitSplitItem(t, r)
		}
		return b[:len(b)-len(r)], r
	case 5:
		r := rest
		for range 2 * n {
			_, r = kitSplitItem(t, r)
		}
		return b[:len(b)-len(r)], r
	}
	t.Fatalf("kit: unsupported major type %d", mt)
	return nil, nil
}

// build returns the envelope bytes of v.
func (w *kitWorld) build(t testing.TB, v vspec) []byte {
	payload := []byte(v.payload)
	if payload == nil {
		payload = fieldsOf(v.msg).enc()
	}
	keyName := v.key
	if keyName == "" {
		keyName = regionA
		if v.msg != nil {
			keyName = v.msg.Src
		} else if v.of != nil {
			keyName = v.of.Src
		}
	}
	key := w.keys[keyName]
	if key == nil {
		t.Fatalf("vector %s: no key %q", v.name, keyName)
	}
	prot := []byte(v.protected)
	if prot == nil {
		prot = kitProtected(-35, kitKID(t, &key.PublicKey))
	}
	unprot := v.unprotected
	if unprot == nil {
		unprot = cMap()
	}
	sig := kitSign(t, key, prot, payload)
	if v.sig != nil {
		sig = v.sig(sig)
	}
	var env []byte
	if v.frame != nil {
		env = v.frame(prot, unprot, payload, sig)
	} else {
		env = kitEnvelope(prot, unprot, payload, sig)
	}
	if v.post != nil {
		env = v.post(env)
	}
	return env
}

// generate returns every file under testdata that the kit produces, by
// path relative to testdata.
func generate(t testing.TB) map[string][]byte {
	w := newKitWorld(t)
	files := map[string][]byte{}
	writeJSON := func(name string, v any) {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		files[name] = append(b, '\n')
	}

	bf := bundleFile{Partition: testPartition, Regions: []string{regionC, regionB, regionA}, Keys: []bundleKeyFile{}}
	slices.Sort(bf.Regions)
	for _, k := range kitKeys {
		key := w.keys[k.name]
		files[filepath.Join("keys", k.name+".pem")] = keyPEM(t, key)
		if !k.inBundle {
			continue
		}
		der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		bf.Keys = append(bf.Keys, bundleKeyFile{
			Region:    k.region,
			KID:       hex.EncodeToString(kitKID(t, &key.PublicKey)),
			PublicKey: base64.StdEncoding.EncodeToString(der),
			NotBefore: k.notBefore.Format(time.RFC3339),
			NotAfter:  k.notAfter.Format(time.RFC3339),
		})
	}
	// Same order as Bundle.MarshalJSON: region, not_before, kid.
	slices.SortFunc(bf.Keys, func(a, b bundleKeyFile) int {
		return strings.Compare(a.Region+a.NotBefore+a.KID, b.Region+b.NotBefore+b.KID)
	})
	writeJSON("bundle.json", bf)

	seen := map[string]bool{}
	for _, v := range w.specs(t) {
		if seen[v.name] {
			t.Fatalf("vector %s defined twice", v.name)
		}
		seen[v.name] = true
		env := w.build(t, v)
		vf := vectorFile{
			Name:     v.name,
			Comment:  v.comment,
			Envelope: hex.EncodeToString(env),
			Now:      t0.Add(time.Second).Format(time.RFC3339Nano),
			Valid:    v.reason == "",
			Reason:   string(v.reason),
		}
		if !v.now.IsZero() {
			vf.Now = v.now.UTC().Format(time.RFC3339Nano)
		}
		m := v.msg
		if m == nil { // a raw payload built from the fields of v.of, or of the init vector
			m = v.of
		}
		if m == nil {
			m = w.init
		}
		vf.Receiver = m.Dst
		vf.Subject = kitInbox(m)
		if v.receiver != nil {
			vf.Receiver = *v.receiver
		}
		if v.subject != nil {
			vf.Subject = *v.subject
		}
		if vf.Valid {
			vf.Digest = hex.EncodeToString(kitDigest(env))
			vf.Message = v.msg
		}
		writeJSON(filepath.Join("vectors", v.name+".json"), vf)
	}

	tr := sha512.New384()
	for _, f := range [][]byte{[]byte("mrkrepl/1 transcript"), kitDigest(w.envs["init"]), kitDigest(w.envs["offer"]), kitDigest(w.envs["material"])} {
		tr.Write(binary.BigEndian.AppendUint32(nil, uint32(len(f))))
		tr.Write(f)
	}
	writeJSON("transcript.json", transcriptFile{
		Label:            "mrkrepl/1 transcript",
		InitDigest:       hex.EncodeToString(kitDigest(w.envs["init"])),
		OfferDigest:      hex.EncodeToString(kitDigest(w.envs["offer"])),
		MaterialDigest:   hex.EncodeToString(kitDigest(w.envs["material"])),
		TranscriptDigest: hex.EncodeToString(tr.Sum(nil)),
	})
	return files
}

// TestVectorsGolden regenerates testdata with the kit and compares it with
// the files on disk; with -update it writes them instead.
func TestVectorsGolden(t *testing.T) {
	files := generate(t)
	onDisk, err := filepath.Glob(filepath.Join("testdata", "vectors", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		for _, p := range onDisk {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}
		for name, data := range files {
			p := filepath.Join("testdata", name)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("wrote %d files under testdata", len(files))
		return
	}
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Errorf("%v (run go test -run TestVectors -update)", err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("testdata/%s is out of date (run go test -run TestVectors -update)", name)
		}
	}
	for _, p := range onDisk {
		rel, _ := filepath.Rel("testdata", p)
		if _, ok := files[rel]; !ok {
			t.Errorf("%s is not produced by the kit (run go test -run TestVectors -update)", p)
		}
	}
}

// parseStage reports whether r is decided by Parse (no bundle, no clock).
func parseStage(r Reason) bool {
	switch r {
	case ReasonTooLarge, ReasonMalformed, ReasonNonCanonical, ReasonBadAlgorithm, ReasonBadVersion:
		return true
	}
	return false
}

type loadedVector struct {
	vectorFile
	raw  []byte
	now  time.Time
	path string
}

func loadVectors(t testing.TB) []loadedVector {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join("testdata", "vectors", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Fatal("no vectors in testdata/vectors (run go test -run TestVectors -update)")
	}
	var out []loadedVector
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var lv loadedVector
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&lv.vectorFile); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if lv.raw, err = hex.DecodeString(lv.Envelope); err != nil {
			t.Fatalf("%s: envelope: %v", p, err)
		}
		if lv.now, err = time.Parse(time.RFC3339Nano, lv.Now); err != nil {
			t.Fatalf("%s: now: %v", p, err)
		}
		lv.path = p
		out = append(out, lv)
	}
	return out
}

func loadTestBundle(t testing.TB) *Bundle {
	t.Helper()
	b, err := LoadBundle(filepath.Join("testdata", "bundle.json"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestVectors checks Verify and Parse against every vector file.
func TestVectors(t *testing.T) {
	bundle := loadTestBundle(t)
	vectors := loadVectors(t)
	var valid, invalid int
	reasons := map[Reason]bool{}
	for _, v := range vectors {
		t.Run(v.Name, func(t *testing.T) {
			env, err := Verify(v.raw, VerifyOptions{Bundle: bundle, Now: v.now, Receiver: v.Receiver, Subject: v.Subject})
			penv, perr := Parse(v.raw)
			if v.Valid {
				valid++
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if perr != nil {
					t.Fatalf("Parse: %v", perr)
				}
				if got := hex.EncodeToString(env.Digest); got != v.Digest {
					t.Errorf("digest %s, want %s", got, v.Digest)
				}
				if !bytes.Equal(env.Raw, v.raw) {
					t.Error("Raw differs from the input")
				}
				if !messagesEqual(&env.Message, v.Message) || !messagesEqual(&penv.Message, v.Message) {
					t.Errorf("message\n got %+v\nwant %+v", env.Message, *v.Message)
				}
				return
			}
			invalid++
			want := Reason(v.Reason)
			reasons[want] = true
			if got := ReasonOf(err); got != want {
				t.Fatalf("Verify: reason %q (%v), want %q", got, err, want)
			}
			if env != nil {
				t.Error("Verify returned an envelope with an error")
			}
			if parseStage(want) {
				if got := ReasonOf(perr); got != want {
					t.Errorf("Parse: reason %q (%v), want %q", got, perr, want)
				}
			} else if perr != nil {
				t.Errorf("Parse: %v, want success (%s is decided after parsing)", perr, want)
			}
			if msg := err.Error(); len(msg) > 200 {
				t.Errorf("error message of %d bytes: %s", len(msg), msg)
			}
		})
	}
	if invalid <= valid {
		t.Errorf("%d negative vectors, %d positive: want more negative ones", invalid, valid)
	}
	for _, r := range Reasons() {
		if !reasons[r] {
			t.Errorf("no negative vector for reason %s", r)
		}
	}
}

// messagesEqual compares messages, treating nil and empty byte slices alike.
func messagesEqual(a, b *Message) bool {
	if a == nil || b == nil {
		return a == b
	}
	return reflect.DeepEqual(normalize(a), normalize(b))
}

func normalize(m *Message) *Message {
	c := cloneMessage(m, nil)
	for _, p := range []*[]byte{
		fieldPtr(c.Offer, func(o *Offer) *[]byte { return &o.InitDigest }),
		fieldPtr(c.Offer, func(o *Offer) *[]byte { return &o.RAKB }),
		fieldPtr(c.Material, func(o *Material) *[]byte { return &o.OfferDigest }),
		fieldPtr(c.Material, func(o *Material) *[]byte { return &o.RAKA }),
		fieldPtr(c.Material, func(o *Material) *[]byte { return &o.WrappedKey }),
		fieldPtr(c.Receipt, func(o *Receipt) *[]byte { return &o.MaterialDigest }),
		fieldPtr(c.Receipt, func(o *Receipt) *[]byte { return &o.KeyConfirmation }),
		fieldPtr(c.Status, func(o *Status) *[]byte { return &o.SyncDigest }),
		fieldPtr(c.Accept, func(o *Accept) *[]byte { return &o.HandoverDigest }),
	} {
		if p != nil && len(*p) == 0 {
			*p = nil
		}
	}
	for _, p := range []*[]uint32{
		fieldPtr(c.Sync, func(o *Sync) *[]uint32 { return &o.Versions }),
		fieldPtr(c.Status, func(o *Status) *[]uint32 { return &o.Versions }),
		fieldPtr(c.Handover, func(o *Handover) *[]uint32 { return &o.Versions }),
	} {
		if p != nil && len(*p) == 0 {
			*p = nil
		}
	}
	if c.Handover != nil && len(c.Handover.Replicas) == 0 {
		c.Handover.Replicas = nil
	}
	return c
}

func fieldPtr[T, S any](body *T, f func(*T) *S) *S {
	if body == nil {
		return nil
	}
	return f(body)
}

// TestTranscriptVector checks TranscriptDigest against testdata/transcript.json.
func TestTranscriptVector(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "transcript.json"))
	if err != nil {
		t.Fatal(err)
	}
	var tf transcriptFile
	if err := json.Unmarshal(data, &tf); err != nil {
		t.Fatal(err)
	}
	dec := func(s string) []byte {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	got := TranscriptDigest(dec(tf.InitDigest), dec(tf.OfferDigest), dec(tf.MaterialDigest))
	if hex.EncodeToString(got) != tf.TranscriptDigest {
		t.Errorf("TranscriptDigest = %x, want %s", got, tf.TranscriptDigest)
	}
	if tf.Label != transcriptLabel {
		t.Errorf("label %q, want %q", tf.Label, transcriptLabel)
	}
}

// TestVectorDetails pins the detail of refusals whose reason alone would
// not tell an operator what was wrong.
func TestVectorDetails(t *testing.T) {
	want := map[string]string{
		"untagged":         "not a tagged COSE_Sign1",
		"detached-payload": "detached",
		"rak-compressed":   "uncompressed point",
		"rak-not-on-curve": "not a point on P-384",
		"high-s":           "high-S",
		"payload-unsorted": "payload: not the canonical encoding",
		"trailing-byte":    "trailing bytes",
		"truncated":        "truncated",
	}
	for _, v := range loadVectors(t) {
		sub, ok := want[v.Name]
		if !ok {
			continue
		}
		delete(want, v.Name)
		_, err := Parse(v.raw)
		var ve *VerifyError
		if !errors.As(err, &ve) || !strings.Contains(ve.Detail, sub) {
			t.Errorf("%s: got %v, want a detail containing %q", v.Name, err, sub)
		}
	}
	for name := range want {
		t.Errorf("no vector %s", name)
	}
}
