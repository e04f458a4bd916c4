package messages

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestBundleFile(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "bundle.json"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := ParseBundle(data)
	if err != nil {
		t.Fatal(err)
	}
	if b.Partition() != testPartition {
		t.Errorf("partition %q", b.Partition())
	}
	if got := b.Regions(); !slices.Equal(got, []string{regionC, regionB, regionA}) {
		t.Errorf("regions %v", got)
	}
	// MarshalJSON is the compact form of the kit's file: same fields, same order.
	var want bytes.Buffer
	if err := json.Compact(&want, data); err != nil {
		t.Fatal(err)
	}
	got, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Errorf("MarshalJSON:\n got %s\nwant %s", got, want.Bytes())
	}
	// Round trip.
	b2, err := ParseBundle(got)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := b2.MarshalJSON(); !bytes.Equal(again, got) {
		t.Error("ParseBundle(MarshalJSON) is not stable")
	}
	if n := len(b.Keys()); n != 5 {
		t.Errorf("%d keys, want 5", n)
	}
	for _, k := range b.Keys() {
		if !b.HasRegion(k.Region) {
			t.Errorf("key of unlisted region %s", k.Region)
		}
		if kid, _ := KID(k.PublicKey); !bytes.Equal(kid, k.KID) {
			t.Error("kid is not the key's")
		}
	}
}

func TestBundleAccessorsCopy(t *testing.T) {
	b := loadTestBundle(t)
	r := b.Regions()
	r[0] = "zzz"
	if b.Regions()[0] == "zzz" {
		t.Error("Regions shares its slice")
	}
	key := loadKey(t, regionA)
	kid, _ := KID(&key.PublicKey)
	k, ok := b.Key(kid)
	if !ok {
		t.Fatal("kid not found")
	}
	k.KID[0] ^= 0xff
	if _, ok := b.Key(kid); !ok {
		t.Error("Key shares its KID")
	}
	if _, ok := b.Key(kid[:31]); ok {
		t.Error("prefix of a kid found")
	}
	if !b.HasRegion(regionA) || b.HasRegion("sa-east-1") || b.HasRegion("") {
		t.Error("HasRegion")
	}
	var nb *Bundle
	if nb.Partition() != "" || nb.Regions() != nil || nb.HasRegion(regionA) || nb.Keys() != nil {
		t.Error("nil bundle accessors")
	}
	if _, ok := nb.Key(kid); ok {
		t.Error("nil bundle Key")
	}
}

func TestNewBundle(t *testing.T) {
	key := loadKey(t, regionA)
	kid, _ := KID(&key.PublicKey)
	from, until := keysFrom, keysUntil
	good := BundleKey{Region: regionA, PublicKey: &key.PublicKey, NotBefore: from, NotAfter: until}
	b, err := NewBundle(testPartition, []string{regionB, regionA}, []BundleKey{good})
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := b.Key(kid); !ok || !bytes.Equal(k.KID, kid) {
		t.Error("empty KID not filled in")
	}
	if !slices.Equal(b.Regions(), []string{regionB, regionA}) {
		t.Errorf("regions %v not sorted", b.Regions())
	}
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	with := func(f func(*BundleKey)) []BundleKey {
		k := good
		f(&k)
		return []BundleKey{k}
	}
	for _, tc := range []struct {
		name      string
		partition string
		regions   []string
		keys      []BundleKey
	}{
		{"partition", "Test", []string{regionA}, nil},
		{"no-regions", testPartition, nil, nil},
		{"region-name", testPartition, []string{"us.east"}, nil},
		{"region-twice", testPartition, []string{regionA, regionA}, nil},
		{"key-region", testPartition, []string{regionB}, with(func(*BundleKey) {})},
		{"wrong-kid", testPartition, []string{regionA}, with(func(k *BundleKey) { k.KID = make([]byte, 32) })},
		{"p256", testPartition, []string{regionA}, with(func(k *BundleKey) { k.PublicKey = &p256.PublicKey })},
		{"nil-key", testPartition, []string{regionA}, with(func(k *BundleKey) { k.PublicKey = nil })},
		{"window-empty", testPartition, []string{regionA}, with(func(k *BundleKey) { k.NotAfter = k.NotBefore })},
		{"window-reversed", testPartition, []string{regionA}, with(func(k *BundleKey) { k.NotAfter = from.Add(-time.Hour) })},
		{"kid-twice", testPartition, []string{regionA}, append(with(func(*BundleKey) {}), good)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewBundle(tc.partition, tc.regions, tc.keys); err == nil {
				t.Fatal("no error")
			}
		})
	}
	// A caller mutating its key afterwards does not change what verifies.
	m := newKitWorld(t).init
	raw, err := Seal(m, key)
	if err != nil {
		t.Fatal(err)
	}
	pub := key.PublicKey
	b, err = NewBundle(testPartition, []string{regionA, regionB}, []BundleKey{{Region: regionA, PublicKey: &pub, NotBefore: from, NotAfter: until}})
	if err != nil {
		t.Fatal(err)
	}
	pub.X = new(big.Int) // the caller corrupts its own copy
	if _, err := Verify(raw, VerifyOptions{Bundle: b, Now: t0}); err != nil {
		t.Errorf("Verify after the caller changed its key: %v", err)
	}
}

func TestParseBundleRefuses(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "bundle.json"))
	if err != nil {
		t.Fatal(err)
	}
	var bf bundleFile
	if err := json.Unmarshal(data, &bf); err != nil {
		t.Fatal(err)
	}
	enc := func(f func(*bundleFile)) []byte {
		c := bf
		c.Regions = slices.Clone(bf.Regions)
		c.Keys = slices.Clone(bf.Keys)
		f(&c)
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p256DER, _ := x509.MarshalPKIXPublicKey(&p256.PublicKey)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaDER, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"not-json", []byte("partition: test")},
		{"unknown-field", []byte(strings.Replace(string(data), `"partition"`, `"comment": "x", "partition"`, 1))},
		{"unknown-key-field", []byte(strings.Replace(string(data), `"region"`, `"use": "sig", "region"`, 1))},
		{"trailing-object", append(bytes.Clone(data), []byte("{}")...)},
		{"trailing-garbage", append(bytes.Clone(data), 'x')},
		{"too-large", append(bytes.Clone(data), bytes.Repeat([]byte(" "), MaxBundleSize)...)},
		{"partition", enc(func(b *bundleFile) { b.Partition = "" })},
		{"no-regions", enc(func(b *bundleFile) { b.Regions = nil })},
		{"region-name", enc(func(b *bundleFile) { b.Regions[0] = "AP-SOUTH-1" })},
		{"region-not-listed", enc(func(b *bundleFile) { b.Regions = b.Regions[1:] })},
		{"kid-uppercase", enc(func(b *bundleFile) { b.Keys[0].KID = strings.ToUpper(b.Keys[0].KID) })},
		{"kid-mismatch", enc(func(b *bundleFile) { b.Keys[0].KID = b.Keys[1].KID })},
		{"kid-short", enc(func(b *bundleFile) { b.Keys[0].KID = b.Keys[0].KID[:62] })},
		{"kid-twice", enc(func(b *bundleFile) { b.Keys = append(b.Keys, b.Keys[0]) })},
		{"base64-url", enc(func(b *bundleFile) {
			der, _ := base64.StdEncoding.DecodeString(b.Keys[0].PublicKey)
			b.Keys[0].PublicKey = base64.RawURLEncoding.EncodeToString(der)
		})},
		{"spki-garbage", enc(func(b *bundleFile) { b.Keys[0].PublicKey = base64.StdEncoding.EncodeToString([]byte{1, 2, 3}) })},
		{"spki-trailing", enc(func(b *bundleFile) {
			der, _ := base64.StdEncoding.DecodeString(b.Keys[0].PublicKey)
			b.Keys[0].PublicKey = base64.StdEncoding.EncodeToString(append(der, 0))
		})},
		{"p256", enc(func(b *bundleFile) {
			b.Keys[0].PublicKey = base64.StdEncoding.EncodeToString(p256DER)
			b.Keys[0].KID = hex.EncodeToString(kitKID(t, &p256.PublicKey))
		})},
		{"rsa", enc(func(b *bundleFile) { b.Keys[0].PublicKey = base64.StdEncoding.EncodeToString(rsaDER) })},
		{"time-format", enc(func(b *bundleFile) { b.Keys[0].NotBefore = "2024-01-01" })},
		{"time-missing", enc(func(b *bundleFile) { b.Keys[0].NotAfter = "" })},
		{"window-reversed", enc(func(b *bundleFile) { b.Keys[0].NotBefore, b.Keys[0].NotAfter = b.Keys[0].NotAfter, b.Keys[0].NotBefore })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseBundle(tc.data); err == nil {
				t.Fatal("no error")
			}
		})
	}
	if _, err := LoadBundle(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Error("LoadBundle of a missing file succeeded")
	}
}
