package hsmsvc

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/hsmfault"
)

func openSoftURI(tb testing.TB, uri string, opts Options) HSM {
	tb.Helper()
	h, err := Open(context.Background(), uri, opts)
	if err != nil {
		tb.Fatalf("Open(%q): %v", uri, err)
	}
	tb.Cleanup(func() { h.Close() })
	return h
}

func openSoftMemory(tb testing.TB) HSM { return openSoftURI(tb, "soft:", Options{}) }

func openSoftDir(tb testing.TB) HSM { return openSoftURI(tb, "soft:"+tb.TempDir(), Options{}) }

func TestSoftConformance(t *testing.T) {
	t.Run("memory", func(t *testing.T) {
		runConformance(t, func(t *testing.T) HSM { return openSoftMemory(t) })
	})
	t.Run("dir", func(t *testing.T) {
		runConformance(t, func(t *testing.T) HSM { return openSoftDir(t) })
	})
}

func TestSoftInterop(t *testing.T) {
	runInterop(t,
		func(t *testing.T) HSM { return openSoftMemory(t) },
		func(t *testing.T) HSM { return openSoftDir(t) })
}

func BenchmarkSoft(b *testing.B) {
	runBenchmarks(b, func(b *testing.B) HSM { return openSoftMemory(b) })
}

func TestSoftOpenURIs(t *testing.T) {
	dir := t.TempDir()
	for _, uri := range []string{
		"soft:",
		"soft:" + filepath.Join(dir, "a"),
		"soft://" + filepath.Join(dir, "b"),
		"SOFT:" + filepath.Join(dir, "c"),
		"soft:" + filepath.Join(dir, "d") + "?master-key-file=" + filepath.Join(dir, "d.key"),
	} {
		h, err := Open(t.Context(), uri, Options{})
		if err != nil {
			t.Errorf("Open(%q): %v", uri, err)
			continue
		}
		if h.Backend() != "soft" {
			t.Errorf("Open(%q).Backend() = %q", uri, h.Backend())
		}
		h.Close()
	}
	if _, err := os.Stat(filepath.Join(dir, "d.key")); err != nil {
		t.Errorf("master-key-file not created: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "d", masterKeyName)); err == nil {
		t.Error("master.key created in the directory despite master-key-file")
	}
	for _, tc := range []struct{ uri, want string }{
		{"", "no scheme"},
		{"soft", "no scheme"},
		{"file:/tmp/x", `unsupported scheme "file", want one of soft:, soft:/dir, pkcs11:`},
		{"hsm:", "unsupported scheme"},
		{"soft:relative/dir", "not absolute"},
		{"soft://host/dir", "a host is not allowed"},
		{"soft://user@/dir", "a host is not allowed"},
		{"soft:?master-key-file=/x", "needs a directory"},
		{"soft:" + dir + "?foo=bar", `unknown parameter "foo"`},
		{"soft:" + dir + "?master-key-file=rel", "not absolute"},
		{"soft:" + dir + "?master-key-file=", "with a path"},
		{"soft:" + dir + "?master-key-file=/a&master-key-file=/b", "once"},
		{"soft:" + dir + "#x", "fragment"},
		{"soft:" + dir + "?%zz", "query"},
	} {
		h, err := Open(t.Context(), tc.uri, Options{})
		if err == nil {
			h.Close()
			t.Errorf("Open(%q) succeeded", tc.uri)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open(%q) = %v, want it to say %q", tc.uri, err, tc.want)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := Open(ctx, "soft:", Options{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Open with a canceled context = %v", err)
	}
}

// TestSoftReopen persists keys, a RAKB and the RSK, and finds them again.
func TestSoftReopen(t *testing.T) {
	ctx := t.Context()
	dir := filepath.Join(t.TempDir(), "hsm")
	uri := "soft:" + dir
	peer := openSoftMemory(t)

	h, err := Open(ctx, uri, Options{})
	mustNoErr(t, err)
	pub := h.Signer().Public()
	ref, gone := newKeyRef(t), newKeyRef(t)
	mustNoErr(t, h.GenerateKey(ctx, ref))
	mustNoErr(t, h.GenerateKey(ctx, gone))
	mustNoErr(t, h.DestroyKey(ctx, gone))
	ct, err := h.Encrypt(ctx, ref, []byte("persisted"), []byte("aad"))
	mustNoErr(t, err)
	// A replication in flight: B (this HSM) made its RAKB, then restarts.
	peerRef := newKeyRef(t)
	mustNoErr(t, peer.GenerateKey(ctx, peerRef))
	req, err := prepareReplication(ctx, peer, h, peerRef)
	mustNoErr(t, err)
	// A RAKB that expires while the HSM is closed.
	shortID := newReplicationID()
	_, err = h.CreateAgreementKey(ctx, shortID, time.Now().Add(100*time.Millisecond))
	mustNoErr(t, err)
	mustNoErr(t, h.Close())
	time.Sleep(150 * time.Millisecond)

	h = openSoftURI(t, uri, Options{})
	if !pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(h.Signer().Public()) {
		t.Fatal("the RSK changed across a reopen")
	}
	pt, err := h.Decrypt(ctx, ref, ct, []byte("aad"))
	if err != nil || string(pt) != "persisted" {
		t.Fatalf("Decrypt after reopen = %q, %v", pt, err)
	}
	wantNoKey(t, h, gone)
	if _, err := os.Stat(filepath.Join(dir, rakbFile(shortID))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("expired RAKB file still present after reopen: %v", err)
	}
	wantErrIs(t, "expired RAKB after reopen", h.DestroyAgreementKey(ctx, shortID), ErrNotFound)
	mustNoErr(t, h.UnwrapFromPeer(ctx, req))
	if err := checkSameKey(ctx, peer, h, peerRef); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, rakbFile(req.Context.ReplicationID))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("consumed RAKB file still present: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, keyFile(gone))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("destroyed key file still present: %v", err)
	}

	// Modes: directory 0700, every file 0600.
	fi, err := os.Stat(dir)
	mustNoErr(t, err)
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("directory mode %v, want 0700", fi.Mode().Perm())
	}
	entries, err := os.ReadDir(dir)
	mustNoErr(t, err)
	for _, e := range entries {
		fi, err := e.Info()
		mustNoErr(t, err)
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", e.Name(), fi.Mode().Perm())
		}
	}
}

// TestSoftRSKRotationReopen: the RSKs CreateRSK makes are sealed in the
// store (one file each, named by kid) and come back at the next open.
// TestSoftUnwrapCrashReopen is a kill -9 inside UnwrapFromPeer of a
// persisted store: the process dies after a step (a hook that panics), the
// store is reopened from disk, and the redelivered material is unwrapped
// again: K ends stored and the RAKB gone, at every step.
func TestSoftUnwrapCrashReopen(t *testing.T) {
	ctx := t.Context()
	a := openSoftMemory(t)
	for _, step := range hsmfault.UnwrapSteps {
		t.Run(string(step), func(t *testing.T) {
			uri := "soft:" + filepath.Join(t.TempDir(), "hsm")
			b, err := Open(ctx, uri, Options{})
			mustNoErr(t, err)
			ref := newKeyRef(t)
			mustNoErr(t, a.GenerateKey(ctx, ref))
			req, err := prepareReplication(ctx, a, b, ref)
			mustNoErr(t, err)
			func() {
				defer func() {
					if recover() == nil {
						t.Fatal("the hook did not run")
					}
				}()
				b.UnwrapFromPeer(hsmfault.With(ctx, func(s hsmfault.Step) error {
					if s == step {
						panic("kill -9")
					}
					return nil
				}), req)
			}()
			b.Close() // what is on disk is all that survives
			b, err = Open(ctx, uri, Options{})
			mustNoErr(t, err)
			defer b.Close()
			err = b.UnwrapFromPeer(ctx, req)
			if step == hsmfault.UnwrapRAKBDestroyed {
				wantErrIs(t, "retry after the RAKB was destroyed", err, ErrNotFound)
			} else {
				mustNoErr(t, err)
			}
			if err := checkSameKey(ctx, a, b, ref); err != nil {
				t.Fatal(err)
			}
			wantErrIs(t, "RAKB after the retry", b.DestroyAgreementKey(ctx, req.Context.ReplicationID), ErrNotFound)
		})
	}
}

func TestSoftRSKRotationReopen(t *testing.T) {
	ctx := t.Context()
	dir := filepath.Join(t.TempDir(), "hsm")
	uri := "soft:" + dir
	h, err := Open(ctx, uri, Options{})
	mustNoErr(t, err)
	def := h.Signer().Public().(*ecdsa.PublicKey)
	s, err := h.(RSKRotator).CreateRSK(ctx)
	mustNoErr(t, err)
	kid := s.(*softSigner).kid
	fi, err := os.Stat(filepath.Join(dir, "rsk."+hex.EncodeToString(kid)+sealedSuffix))
	mustNoErr(t, err)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("rotation rsk file mode %v, want 0600", fi.Mode().Perm())
	}
	mustNoErr(t, h.Close())

	h = openSoftURI(t, uri, Options{})
	if !def.Equal(h.Signer().Public()) {
		t.Fatal("the default rsk changed across a reopen")
	}
	rsks, err := h.(RSKRotator).RSKs(ctx)
	mustNoErr(t, err)
	if len(rsks) != 2 || !def.Equal(rsks[0].Public()) || !s.Public().(*ecdsa.PublicKey).Equal(rsks[1].Public()) {
		t.Fatalf("after reopen: %d rsks, want the default and the rotation one", len(rsks))
	}
	digest := sha512.Sum384([]byte("after reopen"))
	sig, err := rsks[1].Sign(rand.Reader, digest[:], crypto.SHA384)
	mustNoErr(t, err)
	if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), digest[:], sig) {
		t.Error("the reloaded rotation rsk signs for another key")
	}
}

func keyFile(ref KeyRef) string {
	return "key." + ref.KeyID + "." + fmt.Sprint(ref.Version) + sealedSuffix
}
func rakbFile(id string) string { return "rakb." + id + sealedSuffix }

// newStore makes a persisted store with one key and returns its directory.
func newStore(t *testing.T) (dir string, ref KeyRef) {
	t.Helper()
	dir = t.TempDir()
	h, err := Open(t.Context(), "soft:"+dir, Options{})
	mustNoErr(t, err)
	ref = newKeyRef(t)
	mustNoErr(t, h.GenerateKey(t.Context(), ref))
	mustNoErr(t, h.Close())
	return dir, ref
}

func wantOpenError(t *testing.T, uri, want string) {
	t.Helper()
	h, err := Open(t.Context(), uri, Options{})
	if err == nil {
		h.Close()
		t.Fatalf("Open(%q) succeeded", uri)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("Open(%q) = %v, want it to say %q", uri, err, want)
	}
}

func TestSoftMasterKey(t *testing.T) {
	t.Run("missing", func(t *testing.T) {
		dir, _ := newStore(t)
		mustNoErr(t, os.Remove(filepath.Join(dir, masterKeyName)))
		wantOpenError(t, "soft:"+dir, "does not exist but the store holds 2 sealed objects")
		if _, err := os.Stat(filepath.Join(dir, masterKeyName)); err == nil {
			t.Error("a new master key was created for an existing store")
		}
	})
	t.Run("wrong", func(t *testing.T) {
		dir, _ := newStore(t)
		mustNoErr(t, os.WriteFile(filepath.Join(dir, masterKeyName), randBytes(32), 0o600))
		wantOpenError(t, "soft:"+dir, "authentication failed: wrong master key")
	})
	t.Run("wrong size", func(t *testing.T) {
		dir, _ := newStore(t)
		mk, err := os.ReadFile(filepath.Join(dir, masterKeyName))
		mustNoErr(t, err)
		mustNoErr(t, os.WriteFile(filepath.Join(dir, masterKeyName), []byte(hex.EncodeToString(mk)), 0o600))
		wantOpenError(t, "soft:"+dir, "holds 64 bytes, want 32 raw bytes")
	})
	t.Run("not a file", func(t *testing.T) {
		dir := t.TempDir()
		mustNoErr(t, os.Mkdir(filepath.Join(dir, masterKeyName), 0o700))
		wantOpenError(t, "soft:"+dir, "not a regular file")
	})
	t.Run("separate file", func(t *testing.T) {
		dir, keyDir := t.TempDir(), t.TempDir()
		mkf := filepath.Join(keyDir, "mk")
		uri := "soft:" + dir + "?master-key-file=" + mkf
		h := openSoftURI(t, uri, Options{})
		ref := newKeyRef(t)
		mustNoErr(t, h.GenerateKey(t.Context(), ref))
		mustNoErr(t, h.Close())
		wantOpenError(t, "soft:"+dir, "does not exist")
		h = openSoftURI(t, uri, Options{})
		if ok, err := h.HasKey(t.Context(), ref); !ok || err != nil {
			t.Fatalf("HasKey = %v, %v", ok, err)
		}
	})
	t.Run("loose mode warns", func(t *testing.T) {
		dir, _ := newStore(t)
		mustNoErr(t, os.Chmod(filepath.Join(dir, masterKeyName), 0o644))
		var logs bytes.Buffer
		openSoftURI(t, "soft:"+dir, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		if !strings.Contains(logs.String(), "accessible to group or others") {
			t.Errorf("no warning in %q", logs.String())
		}
	})
}

func TestSoftStoreTampering(t *testing.T) {
	t.Run("flipped byte", func(t *testing.T) {
		dir, ref := newStore(t)
		p := filepath.Join(dir, keyFile(ref))
		b, err := os.ReadFile(p)
		mustNoErr(t, err)
		b[len(b)-5] ^= 1
		mustNoErr(t, os.WriteFile(p, b, 0o600))
		wantOpenError(t, "soft:"+dir, "authentication failed")
	})
	t.Run("renamed", func(t *testing.T) {
		dir, ref := newStore(t)
		other := KeyRef{KeyID: ref.KeyID, Version: 2}
		mustNoErr(t, os.Rename(filepath.Join(dir, keyFile(ref)), filepath.Join(dir, keyFile(other))))
		wantOpenError(t, "soft:"+dir, "authentication failed")
	})
	t.Run("rsk as key", func(t *testing.T) {
		dir, ref := newStore(t)
		mustNoErr(t, os.Rename(filepath.Join(dir, "rsk"+sealedSuffix), filepath.Join(dir, keyFile(KeyRef{KeyID: ref.KeyID, Version: 9}))))
		wantOpenError(t, "soft:"+dir, "authentication failed")
	})
	t.Run("truncated", func(t *testing.T) {
		dir, ref := newStore(t)
		mustNoErr(t, os.WriteFile(filepath.Join(dir, keyFile(ref)), []byte(sealedMagic), 0o600))
		wantOpenError(t, "soft:"+dir, "not a sealed mrkrepl soft hsm object")
	})
	t.Run("rsk missing", func(t *testing.T) {
		dir, _ := newStore(t)
		mustNoErr(t, os.Remove(filepath.Join(dir, "rsk"+sealedSuffix)))
		wantOpenError(t, "soft:"+dir, "holds keys but no rsk")
	})
	t.Run("unknown object", func(t *testing.T) {
		dir, _ := newStore(t)
		h := openSoftURI(t, "soft:"+dir, Options{}).(*softHSM)
		mustNoErr(t, h.store.put("bogus", []byte("x")))
		mustNoErr(t, h.Close())
		wantOpenError(t, "soft:"+dir, `load object "bogus": unknown object`)
	})
	t.Run("stale temporary file", func(t *testing.T) {
		dir, ref := newStore(t)
		tmp := filepath.Join(dir, tempPrefix+"123")
		mustNoErr(t, os.WriteFile(tmp, []byte("half written"), 0o600))
		h := openSoftURI(t, "soft:"+dir, Options{})
		if ok, err := h.HasKey(t.Context(), ref); !ok || err != nil {
			t.Fatalf("HasKey = %v, %v", ok, err)
		}
		if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("stale temporary file kept: %v", err)
		}
	})
}

func TestSoftDirLock(t *testing.T) {
	dir := t.TempDir()
	h := openSoftURI(t, "soft:"+dir, Options{})
	wantOpenError(t, "soft:"+dir, "in use by another open soft hsm")
	mustNoErr(t, h.Close())
	openSoftURI(t, "soft:"+dir, Options{})
}

func TestSoftSigner(t *testing.T) {
	h := openSoftMemory(t)
	s := h.Signer()
	if _, ok := s.(*softSigner); !ok {
		t.Fatalf("Signer() is %T", s)
	}
	for _, n := range []int{0, 32, 47, 49, 64} {
		if _, err := s.Sign(rand.Reader, make([]byte, n), crypto.SHA384); err == nil {
			t.Errorf("signed a %d-byte digest as SHA-384", n)
		}
	}
	if !strings.Contains(fmt.Sprint(s), hex.EncodeToString(kidOf(h))) {
		t.Errorf("String() = %q, want the kid", fmt.Sprint(s))
	}
}

// TestSoftRedaction logs and prints everything that holds a secret, with
// every verb, and looks for the secrets in the output.
func TestSoftRedaction(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	var logs bytes.Buffer
	var mu sync.Mutex
	logger := slog.New(slog.NewJSONHandler(lockedWriter{&mu, &logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h := openSoftURI(t, "soft:"+dir, Options{Logger: logger}).(*softHSM)
	peer := openSoftMemory(t)

	ref := newKeyRef(t)
	mustNoErr(t, h.GenerateKey(ctx, ref))
	peerRef := newKeyRef(t)
	mustNoErr(t, peer.GenerateKey(ctx, peerRef))
	_, err := replicate(ctx, peer, h, peerRef)
	mustNoErr(t, err)
	id := newReplicationID()
	_, err = h.CreateAgreementKey(ctx, id, time.Now().Add(time.Minute))
	mustNoErr(t, err)
	// Failures too: their errors are printed by callers.
	var errs []error
	_, e := h.Decrypt(ctx, ref, randBytes(40), nil)
	errs = append(errs, e)
	req, err := prepareReplication(ctx, h, peer, ref)
	mustNoErr(t, err)
	req.Wrapped[3] ^= 1
	errs = append(errs, peer.UnwrapFromPeer(ctx, req))

	h.mu.Lock()
	secrets := map[string][]byte{
		"key":     bytes.Clone(h.keys[ref].b),
		"replica": bytes.Clone(h.keys[peerRef].b),
		"rakb":    h.rakbs[id].priv.Bytes(),
	}
	rsk, err := h.signer.priv.Load().Bytes()
	mustNoErr(t, err)
	secrets["rsk"] = rsk
	mk, err := os.ReadFile(filepath.Join(dir, masterKeyName))
	mustNoErr(t, err)
	secrets["master key"] = mk
	holders := []any{h, h.keys[ref], h.rakbs[id], h.signer, h.Signer(), h.keys, h.rakbs, *h.keys[ref], *h.rakbs[id]}
	h.mu.Unlock()

	var out strings.Builder
	for _, v := range holders {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d"} {
			fmt.Fprintf(&out, verb+"\n", v)
		}
		logger.Info("holder", "value", v)
		slog.New(slog.NewTextHandler(&out, nil)).Info("holder", "value", v)
	}
	for _, e := range errs {
		if e == nil {
			t.Fatal("expected a failure")
		}
		fmt.Fprintf(&out, "%v %+v\n", e, e)
	}
	mu.Lock()
	out.Write(logs.Bytes())
	mu.Unlock()
	text := strings.ToLower(out.String())
	for name, s := range secrets {
		for _, enc := range []string{hex.EncodeToString(s), hex.EncodeToString(s[:8]), string(s), strings.Trim(fmt.Sprint(s[:8]), "[]")} {
			if strings.Contains(text, strings.ToLower(enc)) {
				t.Errorf("the %s shows in the output", name)
			}
		}
	}
	if !strings.Contains(text, "redacted") {
		t.Error("no redacted placeholder in the output")
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestSoftEndToEndVector runs the e2e vector through the soft HSM: B with
// the vector's RAKB unwraps the vector's blob; A wraps the vector's key for
// the vector's RAKB and the result opens with the pure functions.
func TestSoftEndToEndVector(t *testing.T) {
	ctx := t.Context()
	var v e2eVector
	readVectors(t, "e2e.json", &v)
	c := v.Context.kdfContext()
	ref := c.Ref()

	b := openSoftMemory(t).(*softHSM)
	rakb, err := ecdh.P384().NewPrivateKey(v.RAKBPrivate)
	mustNoErr(t, err)
	b.mu.Lock()
	b.rakbs[c.ReplicationID] = &agreementKey{priv: rakb, expiresAt: time.Now().Add(time.Minute)}
	b.mu.Unlock()
	mustNoErr(t, b.UnwrapFromPeer(ctx, UnwrapRequest{PeerPublicKey: v.Context.RAKA, Wrapped: v.Wrapped, Context: c}))
	kc, err := b.KeyConfirmation(ctx, ref, v.Transcript)
	if err != nil || !bytes.Equal(kc, v.KeyConfirmation) {
		t.Fatalf("KeyConfirmation = %x, %v; want %x", kc, err, []byte(v.KeyConfirmation))
	}

	a := openSoftMemory(t).(*softHSM)
	a.mu.Lock()
	a.keys[ref] = &secretKey{b: bytes.Clone(v.Key)}
	a.mu.Unlock()
	wc := c
	wc.RAKA = nil
	res, err := a.WrapForPeer(ctx, WrapRequest{PeerPublicKey: v.Context.RAKB, Context: wc})
	mustNoErr(t, err)
	peer, err := parseP384Public(res.RAKA)
	mustNoErr(t, err)
	z, err := rakb.ECDH(peer)
	mustNoErr(t, err)
	wc.RAKA = res.RAKA
	k, err := kwpUnwrap(deriveRWK(z, wc.FixedInfo()), res.Wrapped)
	if err != nil || !bytes.Equal(k, v.Key) {
		t.Fatalf("A's wrap opens to %x, %v; want %x", k, err, []byte(v.Key))
	}
}

// TestSoftExpirySweep checks that CreateAgreementKey removes every expired
// RAKB, not only the one it touches.
func TestSoftExpirySweep(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	h := openSoftURI(t, "soft:"+dir, Options{}).(*softHSM)
	now := time.Now()
	h.now = func() time.Time { return now }
	ids := []string{newReplicationID(), newReplicationID()}
	for _, id := range ids {
		_, err := h.CreateAgreementKey(ctx, id, now.Add(time.Second))
		mustNoErr(t, err)
	}
	now = now.Add(2 * time.Second)
	_, err := h.CreateAgreementKey(ctx, newReplicationID(), now.Add(time.Second))
	mustNoErr(t, err)
	h.mu.Lock()
	n := len(h.rakbs)
	h.mu.Unlock()
	if n != 1 {
		t.Errorf("%d agreement keys after the sweep, want 1", n)
	}
	for _, id := range ids {
		if _, err := os.Stat(filepath.Join(dir, rakbFile(id))); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("expired RAKB file kept: %v", err)
		}
	}
}

// TestSoftSignerSelfTest is the self-test's negative case: a key that is
// not on P-384 is refused.
func TestSoftSignerSelfTest(t *testing.T) {
	h := openSoftMemory(t).(*softHSM)
	priv := h.signer.priv.Load()
	bad := *priv
	bad.PublicKey.Curve = nil
	if _, err := newSoftSigner(&bad); err == nil {
		t.Error("newSoftSigner accepted a key without curve")
	}
	digest := sha512.Sum384(nil)
	if _, err := h.Signer().Sign(nil, digest[:], crypto.SHA384); err != nil {
		t.Errorf("Sign with a nil rand: %v", err)
	}
}

// BenchmarkSoftPrimitives measures the bare Go primitives the soft backend
// is built on, in the same run, so BenchmarkSoft reads as overhead over them
// whatever the load of the machine.
func BenchmarkSoftPrimitives(b *testing.B) {
	rsk, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	mustNoErr(b, err)
	b.Run("ECDSASign", func(b *testing.B) {
		digest := sha512.Sum384([]byte("bench"))
		for b.Loop() {
			if _, err := ecdsa.SignASN1(rand.Reader, rsk, digest[:]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ECDHGenerateKey", func(b *testing.B) {
		for b.Loop() {
			if _, err := ecdh.P384().GenerateKey(rand.Reader); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ECDH", func(b *testing.B) {
		k, err := ecdh.P384().GenerateKey(rand.Reader)
		mustNoErr(b, err)
		peer, err := parseP384Public(newPoint())
		mustNoErr(b, err)
		for b.Loop() {
			if _, err := k.ECDH(peer); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ParseP384Public", func(b *testing.B) {
		p := newPoint()
		for b.Loop() {
			if _, err := parseP384Public(p); err != nil {
				b.Fatal(err)
			}
		}
	})
}
