package messages

// The test kit: an encoder for CBOR and COSE_Sign1 written for the tests,
// independent of the code under test and of fxamacker/cbor and go-cose, in
// the manner of C2SP/CCTV. It builds the test vectors byte by byte, so a
// vector can carry exactly one defect (an unsorted map, a non-minimal
// integer, a high-S signature ...) that Seal would never produce.

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// cb is one encoded CBOR data item (or, for the defect builders, any bytes).
type cb []byte

// kitHead returns the shortest head for major type m and argument n.
func kitHead(m byte, n uint64) []byte {
	switch {
	case n < 24:
		return []byte{m<<5 | byte(n)}
	case n < 1<<8:
		return []byte{m<<5 | 24, byte(n)}
	case n < 1<<16:
		return []byte{m<<5 | 25, byte(n >> 8), byte(n)}
	case n < 1<<32:
		return []byte{m<<5 | 26, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
	default:
		return kitHeadWide(m, n, 8)
	}
}

// kitHeadWide returns a head for major type m and argument n with an
// argument of exactly width bytes (1, 2, 4 or 8), minimal or not.
func kitHeadWide(m byte, n uint64, width int) []byte {
	ai := map[int]byte{1: 24, 2: 25, 4: 26, 8: 27}[width]
	b := []byte{m<<5 | ai}
	for i := width - 1; i >= 0; i-- {
		b = append(b, byte(n>>(8*i)))
	}
	return b
}

func cUint(n uint64) cb { return kitHead(0, n) }

func cInt(n int64) cb {
	if n >= 0 {
		return kitHead(0, uint64(n))
	}
	return kitHead(1, uint64(-1-n))
}

func cBytes(b []byte) cb { return append(kitHead(2, uint64(len(b))), b...) }

func cText(s string) cb { return append(kitHead(3, uint64(len(s))), s...) }

func cArray(items ...cb) cb {
	out := kitHead(4, uint64(len(items)))
	for _, it := range items {
		out = append(out, it...)
	}
	return out
}

// cUints encodes a version list: an array of unsigned integers.
func cUints(vs []uint32) cb {
	items := make([]cb, len(vs))
	for i, v := range vs {
		items[i] = cUint(uint64(v))
	}
	return cArray(items...)
}

// cTexts encodes an array of text strings.
func cTexts(ss []string) cb {
	items := make([]cb, len(ss))
	for i, s := range ss {
		items[i] = cText(s)
	}
	return cArray(items...)
}

// cArrayIndef encodes an indefinite-length array (forbidden by the protocol).
func cArrayIndef(items ...cb) cb {
	out := cb{0x9f}
	for _, it := range items {
		out = append(out, it...)
	}
	return append(out, 0xff)
}

func cTag(n uint64, content cb) cb { return append(kitHead(6, n), content...) }

var cNull = cb{0xf6}

// pair is one map entry.
type pair struct{ k, v cb }

// cMap encodes a map with its keys sorted as RFC 8949 section 4.2.1
// requires: bytewise lexicographic order of the encoded keys.
func cMap(pairs ...pair) cb {
	sorted := slices.Clone(pairs)
	slices.SortFunc(sorted, func(a, b pair) int { return bytes.Compare(a.k, b.k) })
	return cMapInOrder(sorted...)
}

// cMapInOrder encodes a map with its entries in the given order.
func cMapInOrder(pairs ...pair) cb {
	out := kitHead(5, uint64(len(pairs)))
	for _, p := range pairs {
		out = append(out, p.k...)
		out = append(out, p.v...)
	}
	return out
}

// cMapIndef encodes an indefinite-length map (forbidden by the protocol).
func cMapIndef(pairs ...pair) cb {
	out := cb{0xbf}
	for _, p := range pairs {
		out = append(out, p.k...)
		out = append(out, p.v...)
	}
	return append(out, 0xff)
}

// fields is a payload map under construction: text keys, encoded values.
type fields []pair

func (f fields) get(k string) cb {
	for _, p := range f {
		if bytes.Equal(p.k, cText(k)) {
			return p.v
		}
	}
	return nil
}

// set replaces the value of k, or adds k.
func (f fields) set(k string, v cb) fields {
	out := slices.Clone(f)
	for i, p := range out {
		if bytes.Equal(p.k, cText(k)) {
			out[i].v = v
			return out
		}
	}
	return append(out, pair{cText(k), v})
}

func (f fields) del(k string) fields {
	return slices.DeleteFunc(slices.Clone(f), func(p pair) bool { return bytes.Equal(p.k, cText(k)) })
}

func (f fields) enc() cb { return cMap(f...) }

// fieldsOf returns the payload of m as the protocol spells it, field names
// written out here rather than taken from the struct tags.
func fieldsOf(m *Message) fields {
	h := &m.Header
	f := fields{
		{cText("v"), cInt(int64(h.V))},
		{cText("type"), cText(string(h.Type))},
		{cText("msg_id"), cText(h.MsgID)},
		{cText("replication_id"), cText(h.ReplicationID)},
		{cText("partition"), cText(h.Partition)},
		{cText("src"), cText(h.Src)},
		{cText("dst"), cText(h.Dst)},
		{cText("sent_at"), cInt(h.SentAt)},
		{cText("expires_at"), cInt(h.ExpiresAt)},
	}
	if b := m.Init; b != nil {
		f = f.set("init", fields{
			{cText("key_id"), cText(b.KeyID)},
			{cText("key_spec"), cText(b.KeySpec)},
			{cText("key_usage"), cText(b.KeyUsage)},
			{cText("version"), cUint(uint64(b.Version))},
			{cText("primary_region"), cText(b.PrimaryRegion)},
		}.enc())
	}
	if b := m.Offer; b != nil {
		f = f.set("offer", fields{
			{cText("init_digest"), cBytes(b.InitDigest)},
			{cText("rakb"), cBytes(b.RAKB)},
		}.enc())
	}
	if b := m.Material; b != nil {
		f = f.set("material", fields{
			{cText("offer_digest"), cBytes(b.OfferDigest)},
			{cText("raka"), cBytes(b.RAKA)},
			{cText("wrapped_key"), cBytes(b.WrappedKey)},
			{cText("properties"), fields{
				{cText("key_spec"), cText(b.Properties.KeySpec)},
				{cText("key_usage"), cText(b.Properties.KeyUsage)},
				{cText("description"), cText(b.Properties.Description)},
			}.enc()},
		}.enc())
	}
	if b := m.Receipt; b != nil {
		f = f.set("receipt", fields{
			{cText("material_digest"), cBytes(b.MaterialDigest)},
			{cText("status"), cText(b.Status)},
			{cText("key_confirmation"), cBytes(b.KeyConfirmation)},
		}.enc())
	}
	if b := m.Sync; b != nil {
		f = f.set("sync", fields{
			{cText("key_id"), cText(b.KeyID)},
			{cText("epoch"), cUint(b.Epoch)},
			{cText("primary_region"), cText(b.PrimaryRegion)},
			{cText("current_version"), cUint(uint64(b.CurrentVersion))},
			{cText("versions"), cUints(b.Versions)},
			{cText("description"), cText(b.Description)},
			{cText("ack_status_seq"), cUint(b.AckStatusSeq)},
		}.enc())
	}
	if b := m.Status; b != nil {
		f = f.set("status", fields{
			{cText("key_id"), cText(b.KeyID)},
			{cText("epoch"), cUint(b.Epoch)},
			{cText("primary_region"), cText(b.PrimaryRegion)},
			{cText("status_seq"), cUint(b.StatusSeq)},
			{cText("state"), cText(b.State)},
			{cText("versions"), cUints(b.Versions)},
			{cText("deletion_date"), cInt(b.DeletionDate)},
			{cText("sync_digest"), cBytes(b.SyncDigest)},
		}.enc())
	}
	if b := m.Handover; b != nil {
		f = f.set("handover", fields{
			{cText("key_id"), cText(b.KeyID)},
			{cText("epoch"), cUint(b.Epoch)},
			{cText("current_version"), cUint(uint64(b.CurrentVersion))},
			{cText("versions"), cUints(b.Versions)},
			{cText("replicas"), cTexts(b.Replicas)},
			{cText("description"), cText(b.Description)},
		}.enc())
	}
	if b := m.Accept; b != nil {
		f = f.set("accept", fields{
			{cText("handover_digest"), cBytes(b.HandoverDigest)},
			{cText("key_id"), cText(b.KeyID)},
			{cText("epoch"), cUint(b.Epoch)},
		}.enc())
	}
	return f
}

// kitKID is SHA-256 of the SubjectPublicKeyInfo DER.
func kitKID(t testing.TB, pub *ecdsa.PublicKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	return sum[:]
}

// kitProtected encodes the protected header map {1: alg, 4: kid}.
func kitProtected(alg int64, kid []byte) cb {
	return cMap(pair{cUint(1), cInt(alg)}, pair{cUint(4), cBytes(kid)})
}

// kitToBeSigned encodes the Sig_structure of RFC 9052, section 4.4:
// ["Signature1", protected, external_aad (an empty byte string), payload].
func kitToBeSigned(protected, payload []byte) []byte {
	return cArray(cText("Signature1"), cBytes(protected), cBytes(nil), cBytes(payload))
}

var kitN = elliptic.P384().Params().N

// kitSign returns the ES384 signature r ‖ s (48 bytes each) over the
// Sig_structure, deterministic (RFC 6979) and with s ≤ n/2.
func kitSign(t testing.TB, key *ecdsa.PrivateKey, protected, payload []byte) []byte {
	t.Helper()
	digest := sha512.Sum384(kitToBeSigned(protected, payload))
	der, err := key.Sign(nil, digest[:], crypto.SHA384) // nil rand: RFC 6979
	if err != nil {
		t.Fatal(err)
	}
	var sig struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(der, &sig); err != nil {
		t.Fatal(err)
	}
	if sig.S.Cmp(new(big.Int).Rsh(kitN, 1)) > 0 {
		sig.S.Sub(kitN, sig.S)
	}
	out := make([]byte, 96)
	sig.R.FillBytes(out[:48])
	sig.S.FillBytes(out[48:])
	return out
}

// kitHighS returns the other valid signature (r, n−s).
func kitHighS(sig []byte) []byte {
	s := new(big.Int).SetBytes(sig[48:])
	s.Sub(kitN, s)
	out := slices.Clone(sig)
	s.FillBytes(out[48:])
	return out
}

// kitEnvelope encodes #6.18([bstr protected, unprotected, bstr payload, bstr signature]).
func kitEnvelope(protected []byte, unprotected cb, payload, sig []byte) []byte {
	return cTag(18, cArray(cBytes(protected), unprotected, cBytes(payload), cBytes(sig)))
}

// kitSeal builds a well-formed envelope of payload signed by key.
func kitSeal(t testing.TB, key *ecdsa.PrivateKey, payload []byte) []byte {
	prot := kitProtected(-35, kitKID(t, &key.PublicKey))
	return kitEnvelope(prot, cMap(), payload, kitSign(t, key, prot, payload))
}

// kitDeriveKey derives a fixed P-384 private key from a label, so the test
// keys in testdata/keys can be regenerated bit for bit. The scalar is
// SHA-384 of the label, which is below the group order n except with
// probability about 2^-190.
func kitDeriveKey(t testing.TB, label string) *ecdsa.PrivateKey {
	t.Helper()
	d := sha512.Sum384([]byte("mrkrepl/1 test key " + label))
	key, err := ecdsa.ParseRawPrivateKey(elliptic.P384(), d[:])
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// kitDerivePoint derives a fixed uncompressed P-384 point (a stand-in for
// a RAK public key).
func kitDerivePoint(t testing.TB, label string) []byte {
	t.Helper()
	d := sha512.Sum384([]byte("mrkrepl/1 test point " + label))
	k, err := ecdh.P384().NewPrivateKey(d[:])
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey().Bytes()
}

// keyPEM encodes a private key as PKCS #8 PEM.
func keyPEM(t testing.TB, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// loadKey reads testdata/keys/<name>.pem.
func loadKey(t testing.TB, name string) *ecdsa.PrivateKey {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "keys", name+".pem"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("key %s: no PRIVATE KEY PEM block", name)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatalf("key %s: %v", name, err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		t.Fatalf("key %s: %T, want *ecdsa.PrivateKey", name, k)
	}
	return ek
}
