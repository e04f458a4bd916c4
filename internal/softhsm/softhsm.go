// Package softhsm creates throwaway SoftHSM2 tokens for tests, the demo and
// local experiments, and returns a PKCS#11 URI (RFC 7512) for each that
// hsmsvc.Open accepts:
//
//	pkcs11:token=<label>?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=<dir>/<label>.pin
//
// # One token directory per process
//
// SoftHSM2 reads its configuration (SOFTHSM2_CONF) and scans its token
// directory once, in C_Initialize; a token that softhsm2-util creates after
// that is invisible to the process until every user of the module has
// finalised it. This package therefore:
//
//   - points SOFTHSM2_CONF, process-wide, at <dir>/softhsm2.conf the first
//     time it is called, and refuses another directory later in the same
//     process;
//   - creates one "keeper" token with softhsm2-util and keeps a
//     github.com/ThalesGroup/crypto11 context open on it for the life of the
//     process, so the module is initialised exactly once, the way crypto11
//     (and so hsmsvc) expects, and never finalised under a running test;
//   - creates every other token in process, through the module itself
//     (C_InitToken on the free slot, C_InitPIN), so it is visible at once to
//     every context in the process.
//
// Call CreateToken or NewToken before the process opens any other pkcs11: URI
// for the SoftHSM2 module: a module initialised earlier with another
// configuration cannot see these tokens, and CreateToken says so.
//
// Tokens are throwaway: the user PIN is written to <dir>/<label>.pin (mode
// 0600) and the SO PIN is discarded. NewToken's directory is removed by the
// next test process that finds its owner gone.
//
// The functions are safe for concurrent use.
package softhsm

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// EnvRequire names the environment variable that turns a missing SoftHSM2
// into a test failure instead of a skip (CI sets it to 1).
const EnvRequire = "MRKREPL_REQUIRE_SOFTHSM"

// InstallHint says what to install when SoftHSM2 is absent.
const InstallHint = "install Debian's softhsm2 (apt-get install softhsm2)"

// modulePaths are where distributions put the SoftHSM2 module, Debian's
// first.
var modulePaths = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib64/pkcs11/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
	"/opt/homebrew/lib/softhsm/libsofthsm2.so",
}

// ErrNotInstalled is returned (wrapped) when the SoftHSM2 module or
// softhsm2-util cannot be found.
var ErrNotInstalled = errors.New("softhsm2 is not installed")

// Module returns the path of the SoftHSM2 PKCS#11 module, or an error
// matching ErrNotInstalled that says what to install.
func Module() (string, error) {
	for _, p := range modulePaths {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: no libsofthsm2.so in %s; %s", ErrNotInstalled, strings.Join(modulePaths, ", "), InstallHint)
}

// Available reports whether SoftHSM2 (its module and softhsm2-util) is
// installed; the error matches ErrNotInstalled and says what to install.
func Available() error {
	if _, err := Module(); err != nil {
		return err
	}
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		return fmt.Errorf("%w: softhsm2-util not in PATH; %s", ErrNotInstalled, InstallHint)
	}
	return nil
}

// checkLabel accepts what fits CK_TOKEN_INFO.label (32 bytes, blank-padded)
// and can be told apart after the padding is trimmed.
func checkLabel(label string) error {
	switch {
	case label == "":
		return errors.New("empty token label")
	case len(label) > 32:
		return fmt.Errorf("token label %q is %d bytes, at most 32", label, len(label))
	case strings.TrimSpace(label) != label:
		return fmt.Errorf("token label %q has leading or trailing blanks", label)
	case label == keeperLabel:
		return fmt.Errorf("token label %q is reserved", label)
	}
	return nil
}
