package messages

// Signed trust bundles: vectors built byte by byte by the test kit
// (kit_test.go: its own CBOR encoder and ES384 signer, neither go-cose nor
// fxamacker/cbor), written to testdata/bundle-vectors and checked against
// VerifyBundle; and SignBundle's output checked by the kit's reading of it.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// bundleVectorFile is one file of testdata/bundle-vectors.
type bundleVectorFile struct {
	Name      string `json:"name"`
	Comment   string `json:"comment"`
	Signed    string `json:"signed"`     // hex: the file's bytes
	RootKey   string `json:"root_key"`   // hex SubjectPublicKeyInfo DER of the root public key to verify with
	MinSerial uint64 `json:"min_serial"` // VerifyBundle's minSerial
	Valid     bool   `json:"valid"`
	Error     string `json:"error,omitempty"`     // unsigned, malformed, bad_signature, wrong_partition, older_serial
	Serial    uint64 `json:"serial,omitempty"`    // for valid vectors
	Partition string `json:"partition,omitempty"` // for valid vectors
	BundleHex string `json:"bundle,omitempty"`    // hex of the signed bundle JSON, for valid vectors
}

// bundleErrors maps a vector's error name to the sentinel.
var bundleErrors = map[string]error{
	"unsigned":        ErrBundleUnsigned,
	"malformed":       ErrBundleMalformed,
	"bad_signature":   ErrBundleBadSignature,
	"wrong_partition": ErrBundleWrongPartition,
	"older_serial":    ErrBundleOlderSerial,
}

// kitBundlePayload encodes the signed-bundle payload map with the kit.
func kitBundlePayload(label string, bundle []byte, serial uint64, partition string) fields {
	return fields{
		{cText("label"), cText(label)},
		{cText("bundle"), cBytes(bundle)},
		{cText("serial"), cUint(serial)},
		{cText("partition"), cText(partition)},
	}
}

// kitSignBundle signs a payload as the kit signs messages.
func kitSignBundle(t testing.TB, key *ecdsa.PrivateKey, payload []byte) []byte {
	return kitSeal(t, key, payload)
}

// kitSmallBundle is a one-region, one-key bundle (the PROTOCOL.md vector).
func kitSmallBundle(t testing.TB) []byte {
	t.Helper()
	key := kitDeriveKey(t, "us-east-1")
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	bf := bundleFile{Partition: "test", Regions: []string{"us-east-1"}, Keys: []bundleKeyFile{{
		Region: "us-east-1", KID: hex.EncodeToString(kitKID(t, &key.PublicKey)),
		PublicKey: base64.StdEncoding.EncodeToString(der), NotBefore: "2024-01-01T00:00:00Z", NotAfter: "2030-01-01T00:00:00Z",
	}}}
	b, err := json.Marshal(bf)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// generateBundleVectors builds every signed-bundle vector.
func generateBundleVectors(t testing.TB) map[string][]byte {
	t.Helper()
	root := kitDeriveKey(t, "bundle-root")
	other := kitDeriveKey(t, "bundle-root-other")
	rootDER, err := x509.MarshalPKIXPublicKey(&root.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	full, err := os.ReadFile(filepath.Join("testdata", "bundle.json"))
	if err != nil {
		t.Fatal(err)
	}
	small := kitSmallBundle(t)
	good := func(serial uint64) fields { return kitBundlePayload(BundleLabel, small, serial, "test") }
	seal := func(f fields) []byte { return kitSignBundle(t, root, f.enc()) }
	prot := kitProtected(-35, kitKID(t, &root.PublicKey))

	files := map[string][]byte{}
	add := func(v bundleVectorFile, signed []byte) {
		v.Signed = hex.EncodeToString(signed)
		if v.RootKey == "" {
			v.RootKey = hex.EncodeToString(rootDER)
		}
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		files[filepath.Join("bundle-vectors", v.Name+".json")] = append(b, '\n')
	}
	valid := func(name, comment string, bundle []byte, serial, min uint64) {
		add(bundleVectorFile{Name: name, Comment: comment, MinSerial: min, Valid: true, Serial: serial,
			Partition: "test", BundleHex: hex.EncodeToString(bundle)},
			seal(kitBundlePayload(BundleLabel, bundle, serial, "test")))
	}
	refused := func(name, comment, errName string, min uint64, signed []byte) {
		add(bundleVectorFile{Name: name, Comment: comment, MinSerial: min, Error: errName}, signed)
	}

	valid("valid", "a one-key bundle, serial 7 (docs/PROTOCOL.md)", small, 7, 0)
	valid("valid-same-serial", "serial 7 with minimum 7: the bundle in force, read again", small, 7, 7)
	valid("valid-full", "testdata/bundle.json, serial 1", full, 1, 1)
	refused("older-serial", "serial 6 when 7 is in force: a rollback", "older_serial", 7, seal(good(6)))
	refused("unsigned", "the bare JSON bundle", "unsigned", 0, small)
	refused("unsigned-space", "the bare JSON bundle after a newline", "unsigned", 0, append([]byte("\n"), small...))
	refused("other-root", "signed by another root key (its own kid)", "bad_signature", 0, kitSignBundle(t, other, good(7).enc()))
	{
		// The root's kid, another key's signature.
		payload := good(7).enc()
		refused("bad-signature", "the root's kid, signed by another key", "bad_signature", 0,
			kitEnvelope(prot, cMap(), payload, kitSign(t, other, prot, payload)))
		sig := kitSign(t, root, prot, payload)
		sig[10] ^= 1
		refused("bad-signature-flipped", "one bit of r flipped", "bad_signature", 0, kitEnvelope(prot, cMap(), payload, sig))
		refused("high-s", "the valid signature's other form (r, n-s)", "malformed", 0,
			kitEnvelope(prot, cMap(), payload, kitHighS(kitSign(t, root, prot, payload))))
		refused("unprotected-kid", "the kid also in the unprotected header", "malformed", 0,
			kitEnvelope(prot, cMap(pair{cUint(4), cBytes(kitKID(t, &root.PublicKey))}), payload, kitSign(t, root, prot, payload)))
		prot3 := cMap(pair{cUint(1), cInt(-35)}, pair{cUint(3), cText("application/json")}, pair{cUint(4), cBytes(kitKID(t, &root.PublicKey))})
		refused("protected-extra-label", "a content type in the protected header", "malformed", 0,
			kitEnvelope(prot3, cMap(), payload, kitSign(t, root, prot3, payload)))
		prot256 := kitProtected(-7, kitKID(t, &root.PublicKey))
		refused("alg-es256", "alg ES256", "malformed", 0, kitEnvelope(prot256, cMap(), payload, kitSign(t, root, prot256, payload)))
		refused("untagged", "the COSE_Sign1 without tag 18", "malformed", 0,
			cArray(cBytes(prot), cMap(), cBytes(payload), cBytes(kitSign(t, root, prot, payload))))
		refused("detached", "a detached (nil) payload", "malformed", 0,
			cTag(18, cArray(cBytes(prot), cMap(), cNull, cBytes(kitSign(t, root, prot, payload)))))
	}
	refused("wrong-partition", "signed for partition other, the bundle inside is test's", "wrong_partition", 0,
		seal(kitBundlePayload(BundleLabel, small, 7, "other")))
	refused("label-v2", "another label (version)", "malformed", 0, seal(kitBundlePayload("mrkrepl-bundle-v2", small, 7, "test")))
	refused("label-missing", "no label", "malformed", 0, seal(good(7).del("label")))
	refused("serial-missing", "no serial", "malformed", 0, seal(good(7).del("serial")))
	refused("serial-0", "serial 0", "malformed", 0, seal(good(0)))
	refused("serial-text", "serial as a text string", "malformed", 0, seal(good(7).set("serial", cText("7"))))
	refused("serial-non-minimal", "serial 7 in a two-byte head", "malformed", 0, seal(good(7).set("serial", cb(kitHeadWide(0, 7, 2)))))
	refused("unknown-field", "an extra field signed_by", "malformed", 0, seal(good(7).set("signed_by", cText("ops"))))
	refused("unsorted", "the payload map's keys not in canonical order", "malformed", 0,
		kitSignBundle(t, root, cMapInOrder(good(7)[3], good(7)[2], good(7)[1], good(7)[0])))
	refused("bundle-text", "the bundle as a text string", "malformed", 0, seal(good(7).set("bundle", cText(string(small)))))
	refused("bundle-not-json", "a signed bundle that is not a bundle", "malformed", 0,
		seal(kitBundlePayload(BundleLabel, []byte(`{"partition":"test"}`), 7, "test")))
	refused("bundle-trailing", "the bundle JSON followed by a second object", "malformed", 0,
		seal(kitBundlePayload(BundleLabel, append(bytes.Clone(small), small...), 7, "test")))
	{
		// A protocol message's envelope, signed by the root: not a bundle.
		msg := fields{{cText("v"), cUint(1)}, {cText("type"), cText("key.sync")}}
		refused("message", "a map that is not the bundle payload", "malformed", 0, seal(msg))
	}
	return files
}

// TestBundleVectorsGolden regenerates testdata/bundle-vectors with the kit
// and compares; with -update it writes them.
func TestBundleVectorsGolden(t *testing.T) {
	files := generateBundleVectors(t)
	onDisk, err := filepath.Glob(filepath.Join("testdata", "bundle-vectors", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		for _, p := range onDisk {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.MkdirAll(filepath.Join("testdata", "bundle-vectors"), 0o755); err != nil {
			t.Fatal(err)
		}
		for name, data := range files {
			if err := os.WriteFile(filepath.Join("testdata", name), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return
	}
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("testdata/%s is out of date (run go test ./messages -run TestBundleVectors -update): %v", name, err)
		}
	}
	for _, p := range onDisk {
		rel, _ := filepath.Rel("testdata", p)
		if _, ok := files[rel]; !ok {
			t.Errorf("%s is not produced by the kit", p)
		}
	}
}

// TestBundleVectors checks VerifyBundle against every file of
// testdata/bundle-vectors: each valid one accepted with its serial and
// exact bundle, each refused one refused with its error (and no other).
func TestBundleVectors(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join("testdata", "bundle-vectors", "*.json"))
	if err != nil || len(paths) < 20 {
		t.Fatalf("%d vectors, %v", len(paths), err)
	}
	seen := map[string]bool{}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var v bundleVectorFile
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		t.Run(v.Name, func(t *testing.T) {
			signed, _ := hex.DecodeString(v.Signed)
			der, _ := hex.DecodeString(v.RootKey)
			root, err := x509.ParsePKIXPublicKey(der)
			if err != nil {
				t.Fatal(err)
			}
			b, serial, err := VerifyBundle(signed, root, v.MinSerial)
			if v.Valid {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				sb, err := VerifySignedBundle(signed, root, v.MinSerial)
				if err != nil || serial != v.Serial || b.Partition() != v.Partition || hex.EncodeToString(sb.JSON) != v.BundleHex {
					t.Fatalf("serial %d partition %q, %v", serial, b.Partition(), err)
				}
				want, _ := hex.DecodeString(v.BundleHex)
				wb, err := ParseBundle(want)
				if err != nil {
					t.Fatal(err)
				}
				gj, _ := json.Marshal(b)
				wj, _ := json.Marshal(wb)
				if !bytes.Equal(gj, wj) {
					t.Error("the bundle is not the one signed")
				}
				return
			}
			seen[v.Error] = true
			want := bundleErrors[v.Error]
			if want == nil {
				t.Fatalf("unknown error %q", v.Error)
			}
			if !errors.Is(err, want) {
				t.Fatalf("err = %v, want %v", err, want)
			}
			for name, other := range bundleErrors {
				if name != v.Error && errors.Is(err, other) {
					t.Errorf("err %v also matches %s", err, name)
				}
			}
			if b != nil || serial != 0 {
				t.Error("a refused bundle was returned")
			}
		})
	}
	for name := range bundleErrors {
		if !seen[name] {
			t.Errorf("no vector for %s", name)
		}
	}
}

// TestSignBundle: SignBundle's output is what the kit would build (same
// payload bytes, same protected header), verifies, and refuses what it
// must not sign.
func TestSignBundle(t *testing.T) {
	root := kitDeriveKey(t, "bundle-root")
	small := kitSmallBundle(t)
	signed, err := SignBundle(small, 42, root)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := ParseSignedBundle(signed)
	if err != nil {
		t.Fatal(err)
	}
	prot := kitProtected(-35, kitKID(t, &root.PublicKey))
	payload := kitBundlePayload(BundleLabel, small, 42, "test").enc()
	// The kit's envelope with SignBundle's signature must be byte-equal.
	sig := signed[len(signed)-96:]
	if !bytes.Equal(signed, kitEnvelope(prot, cMap(), payload, sig)) {
		t.Fatalf("SignBundle's encoding differs from the kit's:\n%x\n%x", signed, kitEnvelope(prot, cMap(), payload, sig))
	}
	if sb.Serial != 42 || sb.Partition != "test" || !bytes.Equal(sb.JSON, small) {
		t.Errorf("parsed %+v", sb)
	}
	if _, _, err := VerifyBundle(signed, &root.PublicKey, 43); !errors.Is(err, ErrBundleOlderSerial) {
		t.Errorf("min 43: %v", err)
	}
	if _, err := VerifyBundleFor(signed, &root.PublicKey, "prod", 0); !errors.Is(err, ErrBundleWrongPartition) {
		t.Errorf("for partition prod: %v", err)
	}
	if _, err := VerifyBundleFor(signed, &root.PublicKey, "test", 42); err != nil {
		t.Errorf("for partition test: %v", err)
	}
	other := kitDeriveKey(t, "bundle-root-other")
	if _, _, err := VerifyBundle(signed, &other.PublicKey, 0); !errors.Is(err, ErrBundleBadSignature) {
		t.Errorf("other root: %v", err)
	}
	if _, err := SignBundle(small, 0, root); err == nil {
		t.Error("serial 0 signed")
	}
	if _, err := SignBundle([]byte(`{"partition":"test"}`), 1, root); err == nil {
		t.Error("a non-bundle signed")
	}
	if _, err := SignBundle(small, 1, nil); err == nil {
		t.Error("no signer accepted")
	}
	if _, _, err := VerifyBundle(signed, nil, 0); err == nil {
		t.Error("no root key: accepted")
	}
}

// FuzzVerifyBundle: VerifyBundle never panics and accepts nothing but a
// bundle the root signed.
func FuzzVerifyBundle(f *testing.F) {
	root := kitDeriveKey(f, "bundle-root")
	for _, data := range generateBundleVectors(f) {
		var v bundleVectorFile
		if json.Unmarshal(data, &v) == nil {
			s, _ := hex.DecodeString(v.Signed)
			f.Add(s)
		}
	}
	f.Fuzz(func(t *testing.T, signed []byte) {
		b, _, err := VerifyBundle(signed, &root.PublicKey, 0)
		if err == nil && b == nil {
			t.Fatal("nil bundle without error")
		}
	})
}
