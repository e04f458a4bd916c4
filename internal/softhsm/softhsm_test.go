//go:build cgo

package softhsm

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ThalesGroup/crypto11"
)

// tokenConfig pulls the token label, module and PIN out of a URI made by
// URI, for a direct crypto11 check independent of hsmsvc's parser.
func tokenConfig(t *testing.T, uri string) *crypto11.Config {
	t.Helper()
	path, query, ok := strings.Cut(strings.TrimPrefix(uri, "pkcs11:"), "?")
	if !ok || !strings.HasPrefix(path, "token=") {
		t.Fatalf("unexpected uri %q", uri)
	}
	label, err := url.PathUnescape(strings.TrimPrefix(path, "token="))
	if err != nil {
		t.Fatal(err)
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		t.Fatal(err)
	}
	pin, err := readPIN(q.Get("pin-source"))
	if err != nil {
		t.Fatal(err)
	}
	// The spelling the keeper (and hsmsvc) use: crypto11 shares a module
	// by path.
	module, err := filepath.EvalSymlinks(q.Get("module-path"))
	if err != nil {
		t.Fatal(err)
	}
	return &crypto11.Config{Path: module, TokenLabel: label, Pin: pin}
}

func tokenPINSource(t *testing.T, uri string) string {
	_, query, _ := strings.Cut(uri, "?")
	q, err := url.ParseQuery(query)
	if err != nil {
		t.Fatal(err)
	}
	return q.Get("pin-source")
}

// Tokens created after the module is loaded must be visible at once, to a
// fresh crypto11 context (the reason this package exists).
func TestNewTokenVisibleInProcess(t *testing.T) {
	for i := range 3 {
		uri := NewToken(t, "visible")
		cfg := tokenConfig(t, uri)
		c, err := crypto11.Configure(cfg)
		if err != nil {
			t.Fatalf("token %d: configure %q: %v", i, cfg.TokenLabel, err)
		}
		if _, err := c.GenerateSecretKeyWithLabel([]byte("id"), []byte("probe"), 256, crypto11.CipherAES); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if st, err := os.Stat(tokenPINSource(t, uri)); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("pin file: %v, mode %v", err, st.Mode())
		}
	}
}

func TestCreateTokenErrors(t *testing.T) {
	if err := Available(); err != nil {
		Unavailable(t, err)
	}
	dir, err := testDir()
	if err != nil {
		t.Fatal(err)
	}
	label := uniqueLabel("dup")
	if _, err := CreateToken(dir, label); err != nil {
		t.Fatal(err)
	}
	if _, err := CreateToken(dir, label); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second token with label %q: err = %v, want already exists", label, err)
	}
	if _, err := CreateToken(t.TempDir(), "other-dir"); err == nil || !strings.Contains(err.Error(), "already uses token directory") {
		t.Fatalf("another directory: err = %v", err)
	}
	for _, bad := range []string{"", strings.Repeat("x", 33), " padded", keeperLabel} {
		if _, err := CreateToken(dir, bad); err == nil {
			t.Errorf("label %q accepted", bad)
		}
	}
}

func TestURIEscapes(t *testing.T) {
	got := URI("/usr/lib/softhsm/libsofthsm2.so", "a b;c", "/tmp/x y/p.pin")
	want := "pkcs11:token=a%20b%3Bc?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/tmp/x%20y/p.pin"
	if got != want {
		t.Fatalf("URI = %q, want %q", got, want)
	}
}
