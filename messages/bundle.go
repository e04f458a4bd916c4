package messages

import (
	"bytes"
	"cmp"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/veraison/go-cose"
)

// Bundle is a partition's trust bundle: the partition's name, its regions,
// and the public RSKs of those regions, each bound to one region and valid
// in a time window. A Bundle is immutable and safe for concurrent use.
//
// Its JSON form (see [ParseBundle]):
//
//	{
//	  "partition": "p",
//	  "regions": ["eu-west-1", "us-east-1"],
//	  "keys": [{
//	    "region": "us-east-1",
//	    "kid": "<64 lowercase hex digits: SHA-256 of the SPKI DER>",
//	    "public_key": "<standard base64 of the SubjectPublicKeyInfo DER>",
//	    "not_before": "2025-01-01T00:00:00Z",
//	    "not_after": "2026-01-01T00:00:00Z"
//	  }]
//	}
type Bundle struct {
	partition string
	regions   []string // sorted
	entries   map[string]*bundleEntry
	ordered   []*bundleEntry // by region, not_before, kid
}

// bundleEntry is one key with what Verify needs, prepared once.
type bundleEntry struct {
	key      BundleKey
	spki     []byte
	verifier cose.Verifier
}

// BundleKey is one RSK entry.
type BundleKey struct {
	Region    string
	KID       []byte
	PublicKey crypto.PublicKey // *ecdsa.PublicKey, P-384
	NotBefore time.Time
	NotAfter  time.Time
}

// MaxBundleSize bounds the JSON form read by [ParseBundle] and [LoadBundle].
const MaxBundleSize = 1 << 20

// NewBundle builds a bundle in memory (tests, demo).
//
// It checks what [ParseBundle] checks: a valid partition name, at least one
// region, valid and distinct region names, and for every key: its region is
// listed, it is an ECDSA P-384 key, KID is SHA-256 of its
// SubjectPublicKeyInfo DER (an empty KID is filled in), no kid appears
// twice, and NotBefore is before NotAfter.
func NewBundle(partition string, regions []string, keys []BundleKey) (*Bundle, error) {
	if !IsName(partition) {
		return nil, fmt.Errorf("bundle: partition %q: bad name", partition)
	}
	if len(regions) == 0 {
		return nil, errors.New("bundle: no regions")
	}
	b := &Bundle{
		partition: partition,
		regions:   slices.Clone(regions),
		entries:   make(map[string]*bundleEntry, len(keys)),
	}
	slices.Sort(b.regions)
	for i, r := range b.regions {
		if !IsName(r) {
			return nil, fmt.Errorf("bundle: region %q: bad name", r)
		}
		if i > 0 && b.regions[i-1] == r {
			return nil, fmt.Errorf("bundle: region %q listed twice", r)
		}
	}
	for i, k := range keys {
		e, err := b.newEntry(k)
		if err != nil {
			return nil, fmt.Errorf("bundle: key %d: %w", i, err)
		}
		id := string(e.key.KID)
		if _, dup := b.entries[id]; dup {
			return nil, fmt.Errorf("bundle: key %d: kid %x listed twice", i, e.key.KID)
		}
		b.entries[id] = e
		b.ordered = append(b.ordered, e)
	}
	slices.SortFunc(b.ordered, func(x, y *bundleEntry) int {
		return cmp.Or(
			cmp.Compare(x.key.Region, y.key.Region),
			x.key.NotBefore.Compare(y.key.NotBefore),
			bytes.Compare(x.key.KID, y.key.KID),
		)
	})
	return b, nil
}

func (b *Bundle) newEntry(k BundleKey) (*bundleEntry, error) {
	if !b.HasRegion(k.Region) {
		return nil, fmt.Errorf("region %q not listed", k.Region)
	}
	spki, err := rskSPKI(k.PublicKey)
	if err != nil {
		return nil, err
	}
	kid, _ := KID(k.PublicKey) // cannot fail: rskSPKI succeeded
	if len(k.KID) != 0 && !bytes.Equal(k.KID, kid) {
		return nil, errors.New("kid is not SHA-256 of the public key's SubjectPublicKeyInfo")
	}
	if !k.NotBefore.Before(k.NotAfter) {
		return nil, errors.New("not_before is not before not_after")
	}
	// The verifier gets its own copy of the key, so that a caller
	// mutating the *ecdsa.PublicKey it passed in cannot change it.
	own, err := x509.ParsePKIXPublicKey(spki)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	verifier, err := cose.NewVerifier(cose.AlgorithmES384, own)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	k.KID = kid
	return &bundleEntry{key: k, spki: spki, verifier: verifier}, nil
}

// bundleJSON is the JSON form of a Bundle.
type bundleJSON struct {
	Partition string          `json:"partition"`
	Regions   []string        `json:"regions"`
	Keys      []bundleKeyJSON `json:"keys"`
}

type bundleKeyJSON struct {
	Region    string `json:"region"`
	KID       string `json:"kid"`
	PublicKey string `json:"public_key"`
	NotBefore string `json:"not_before"`
	NotAfter  string `json:"not_after"`
}

// ParseBundle parses the JSON form. LoadBundle reads it from a file.
//
// Parsing is strict: unknown fields, trailing data, a kid that is not 64
// lowercase hex digits, a public key that is not the standard base64 of a
// DER SubjectPublicKeyInfo of an ECDSA P-384 key, and times that are not
// RFC 3339 are refused, and the result must pass the checks of [NewBundle],
// with the kid given explicitly.
func ParseBundle(data []byte) (*Bundle, error) {
	if len(data) > MaxBundleSize {
		return nil, fmt.Errorf("bundle: larger than %d bytes", MaxBundleSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var bj bundleJSON
	if err := dec.Decode(&bj); err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("bundle: trailing data after the JSON object")
	}
	keys := make([]BundleKey, 0, len(bj.Keys))
	for i, kj := range bj.Keys {
		k, err := kj.parse()
		if err != nil {
			return nil, fmt.Errorf("bundle: key %d: %w", i, err)
		}
		keys = append(keys, k)
	}
	return NewBundle(bj.Partition, bj.Regions, keys)
}

func (kj *bundleKeyJSON) parse() (BundleKey, error) {
	kid, err := hex.DecodeString(kj.KID)
	if err != nil || len(kid) != KIDSize || hex.EncodeToString(kid) != kj.KID {
		return BundleKey{}, errors.New("kid: want 64 lowercase hex digits")
	}
	der, err := base64.StdEncoding.Strict().DecodeString(kj.PublicKey)
	if err != nil {
		return BundleKey{}, errors.New("public_key: not standard base64")
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return BundleKey{}, fmt.Errorf("public_key: %w", err)
	}
	ek, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return BundleKey{}, fmt.Errorf("public_key: want ECDSA P-384, got %T", pub)
	}
	// One accepted encoding: the kid is the hash of these exact bytes.
	if canon, err := x509.MarshalPKIXPublicKey(ek); err != nil || !bytes.Equal(canon, der) {
		return BundleKey{}, errors.New("public_key: not a canonical SubjectPublicKeyInfo")
	}
	notBefore, err := time.Parse(time.RFC3339, kj.NotBefore)
	if err != nil {
		return BundleKey{}, errors.New("not_before: want an RFC 3339 time")
	}
	notAfter, err := time.Parse(time.RFC3339, kj.NotAfter)
	if err != nil {
		return BundleKey{}, errors.New("not_after: want an RFC 3339 time")
	}
	return BundleKey{Region: kj.Region, KID: kid, PublicKey: ek, NotBefore: notBefore, NotAfter: notAfter}, nil
}

// LoadBundle reads the JSON form of a bundle from a file.
func LoadBundle(path string) (*Bundle, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load bundle: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxBundleSize+1))
	if err != nil {
		return nil, fmt.Errorf("load bundle %s: %w", path, err)
	}
	b, err := ParseBundle(data)
	if err != nil {
		return nil, fmt.Errorf("load bundle %s: %w", path, err)
	}
	return b, nil
}

// MarshalJSON returns the JSON form: regions sorted, keys sorted by region,
// not_before and kid, times in UTC.
func (b *Bundle) MarshalJSON() ([]byte, error) {
	if b == nil {
		return []byte("null"), nil
	}
	bj := bundleJSON{
		Partition: b.partition,
		Regions:   slices.Clone(b.regions),
		Keys:      make([]bundleKeyJSON, 0, len(b.ordered)),
	}
	for _, e := range b.ordered {
		bj.Keys = append(bj.Keys, bundleKeyJSON{
			Region:    e.key.Region,
			KID:       hex.EncodeToString(e.key.KID),
			PublicKey: base64.StdEncoding.EncodeToString(e.spki),
			NotBefore: e.key.NotBefore.UTC().Format(time.RFC3339Nano),
			NotAfter:  e.key.NotAfter.UTC().Format(time.RFC3339Nano),
		})
	}
	return json.Marshal(bj)
}

// Partition returns the partition's name.
func (b *Bundle) Partition() string {
	if b == nil {
		return ""
	}
	return b.partition
}

// Regions returns the partition's regions, sorted, in a new slice.
func (b *Bundle) Regions() []string {
	if b == nil {
		return nil
	}
	return slices.Clone(b.regions)
}

// HasRegion reports whether r is a region of the partition.
func (b *Bundle) HasRegion(r string) bool {
	if b == nil {
		return false
	}
	_, found := slices.BinarySearch(b.regions, r)
	return found
}

// Key returns the entry for kid.
func (b *Bundle) Key(kid []byte) (BundleKey, bool) {
	e, ok := b.entry(kid)
	if !ok {
		return BundleKey{}, false
	}
	return e.copyKey(), true
}

// Keys returns every entry, sorted by region, not_before and kid.
func (b *Bundle) Keys() []BundleKey {
	if b == nil {
		return nil
	}
	keys := make([]BundleKey, 0, len(b.ordered))
	for _, e := range b.ordered {
		keys = append(keys, e.copyKey())
	}
	return keys
}

func (b *Bundle) entry(kid []byte) (*bundleEntry, bool) {
	if b == nil {
		return nil, false
	}
	e, ok := b.entries[string(kid)]
	return e, ok
}

// copyKey returns the entry's key with its own copy of KID.
func (e *bundleEntry) copyKey() BundleKey {
	k := e.key
	k.KID = slices.Clone(k.KID)
	return k
}
