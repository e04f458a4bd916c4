package softhsm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
)

// NewToken creates a throwaway token for t in the process's temporary token
// directory and returns its pkcs11: URI (module-path, token, pin-source). The
// token label is label with a suffix that makes it unique in the process.
//
// When SoftHSM2 is absent NewToken skips t with a message saying what to
// install, or fails t if EnvRequire is set to 1.
func NewToken(t testing.TB, label string) (uri string) {
	t.Helper()
	if err := Available(); err != nil {
		Unavailable(t, err)
	}
	dir, err := testDir()
	if err != nil {
		t.Fatalf("softhsm: %v", err)
	}
	uri, err = CreateToken(dir, uniqueLabel(label))
	if errors.Is(err, ErrNotInstalled) { // a build without cgo
		Unavailable(t, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return uri
}

// Unavailable skips t because of err (SoftHSM2 is missing), or fails it when
// EnvRequire is set to 1. It is for tests that find SoftHSM2 missing in their
// own way.
func Unavailable(t testing.TB, err error) {
	t.Helper()
	if os.Getenv(EnvRequire) == "1" {
		t.Fatalf("%v (%s=1 makes this a failure)", err, EnvRequire)
	}
	t.Skipf("skipping PKCS#11 test: %v", err)
}

var labelSeq atomic.Uint64

// uniqueLabel appends "-<n>" to label, shortening label to stay within the
// 32 bytes of a token label.
func uniqueLabel(label string) string {
	if label == "" {
		label = "test"
	}
	suffix := "-" + strconv.FormatUint(labelSeq.Add(1), 10)
	if len(label)+len(suffix) > 32 {
		label = label[:32-len(suffix)]
	}
	return label + suffix
}

var testDirOnce = sync.OnceValues(func() (string, error) {
	tmp := os.TempDir()
	removeStaleDirs(tmp)
	dir := filepath.Join(tmp, fmt.Sprintf("mrkrepl-softhsm-%d", os.Getpid()))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	return dir, nil
})

// testDir returns the process's token directory for tests. A test binary has
// no exit hook, so each one removes the directories of processes that are
// gone instead.
func testDir() (string, error) { return testDirOnce() }
