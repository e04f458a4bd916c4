//go:build cgo

package softhsm

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
)

// keeperLabel names the token that holds the module open for the process.
const keeperLabel = "mrkrepl-keeper"

// proc is the process-wide SoftHSM2 state (see the package doc).
var proc struct {
	mu     sync.Mutex
	dir    string            // token directory in use, "" before the first call
	module string            // module path
	keeper *crypto11.Context // never closed: keeps the module initialised
	p      *pkcs11.Ctx       // our own context on the module, never finalised
}

// CreateToken creates a SoftHSM2 token labelled label in the token
// directory dir (created 0700 if absent; it receives softhsm2.conf, tokens/
// and one PIN file per token), writes a random user PIN to dir/<label>.pin
// (0600) and returns the token's pkcs11: URI with module-path and
// pin-source. Labels are at most 32 bytes and unique in dir.
//
// Every call in one process must name the same dir (see the package doc).
// The error matches ErrNotInstalled when SoftHSM2 is absent.
func CreateToken(dir, label string) (uri string, err error) {
	if err := checkLabel(label); err != nil {
		return "", fmt.Errorf("softhsm: create token: %w", err)
	}
	if !filepath.IsAbs(dir) {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return "", fmt.Errorf("softhsm: create token %q: %w", label, err)
		}
		dir = abs
	}
	dir = filepath.Clean(dir)

	proc.mu.Lock()
	defer proc.mu.Unlock()
	if err := setup(dir); err != nil {
		return "", fmt.Errorf("softhsm: create token %q: %w", label, err)
	}
	pin, err := initToken(label)
	if err != nil {
		return "", fmt.Errorf("softhsm: create token %q: %w", label, err)
	}
	pinFile := filepath.Join(dir, label+".pin")
	if err := os.WriteFile(pinFile, []byte(pin+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("softhsm: create token %q: write pin file: %w", label, err)
	}
	return URI(proc.module, label, pinFile), nil
}

// OpenToken returns the pkcs11: URI of the token labelled label that
// CreateToken made in dir, in this process or an earlier one. The error
// matches fs.ErrNotExist when dir has no such token (no PIN file), and
// ErrNotInstalled when SoftHSM2 is absent. The rules of CreateToken on dir
// apply.
func OpenToken(dir, label string) (uri string, err error) {
	if err := checkLabel(label); err != nil {
		return "", fmt.Errorf("softhsm: open token: %w", err)
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return "", fmt.Errorf("softhsm: open token %q: %w", label, err)
	}
	pinFile := filepath.Join(dir, label+".pin")
	if _, err := os.Stat(pinFile); err != nil {
		return "", fmt.Errorf("softhsm: open token %q: %w", label, err)
	}
	proc.mu.Lock()
	defer proc.mu.Unlock()
	if err := setup(dir); err != nil {
		return "", fmt.Errorf("softhsm: open token %q: %w", label, err)
	}
	return URI(proc.module, label, pinFile), nil
}

// URI returns the pkcs11: URI of the token labelled label in module, with
// its PIN in pinFile.
func URI(module, label, pinFile string) string {
	return "pkcs11:token=" + escape(label, "") +
		"?module-path=" + escape(module, "/") +
		"&pin-source=" + escape(pinFile, "/")
}

// escape percent-encodes every byte of s but RFC 3986 unreserved characters
// and those in keep.
func escape(s, keep string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '-', c == '.', c == '_', c == '~', strings.IndexByte(keep, c) >= 0:
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// setup makes dir the process's token directory, once: configuration file,
// SOFTHSM2_CONF, keeper token and the contexts that keep the module loaded.
func setup(dir string) error {
	if proc.dir != "" {
		if proc.dir != dir {
			return fmt.Errorf("this process already uses token directory %s; SoftHSM2 reads its configuration once per process, so use that directory", proc.dir)
		}
		return nil
	}
	if err := Available(); err != nil {
		return err
	}
	module, _ := Module()
	tokens := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return err
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	config := "# written by mrkrepl internal/softhsm\n" +
		"directories.tokendir = " + tokens + "\n" +
		"objectstore.backend = file\n" +
		"log.level = ERROR\n" +
		"slots.removable = false\n" +
		"slots.mechanisms = ALL\n"
	if err := os.WriteFile(conf, []byte(config), 0o600); err != nil {
		return err
	}
	// Process-wide on purpose: the module reads it in C_Initialize.
	if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
		return err
	}

	keeperPINFile := filepath.Join(dir, keeperLabel+".pin")
	pin, err := readPIN(keeperPINFile)
	if errors.Is(err, os.ErrNotExist) {
		pin = randomPIN()
		// softhsm2-util takes PINs only on its command line; these guard
		// an empty token that exists only to keep the module loaded.
		cmd := exec.Command("softhsm2-util", "--init-token", "--free",
			"--label", keeperLabel, "--pin", pin, "--so-pin", randomPIN())
		cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("softhsm2-util --init-token: %v: %s", err, strings.TrimSpace(string(out)))
		}
		if err := os.WriteFile(keeperPINFile, []byte(pin+"\n"), 0o600); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}

	// hsmsvc hands crypto11 the module path with symlinks resolved, and
	// crypto11 shares a loaded module by path: the keeper must use the same
	// spelling, or the module would be initialised twice.
	canonical := module
	if real, err := filepath.EvalSymlinks(module); err == nil {
		canonical = real
	}
	keeper, err := crypto11.Configure(&crypto11.Config{Path: canonical, TokenLabel: keeperLabel, Pin: pin, MaxSessions: 2})
	if err != nil {
		if strings.Contains(err.Error(), "could not find PKCS#11 token") {
			return fmt.Errorf("the SoftHSM2 module was loaded in this process before its token directory was set up, so it cannot see %s; create tokens before opening any pkcs11: URI", tokens)
		}
		return fmt.Errorf("open keeper token: %v", err)
	}
	p := pkcs11.New(canonical)
	if p == nil {
		_ = keeper.Close()
		return fmt.Errorf("load %s a second time: failed", module)
	}
	if err := p.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		p.Destroy()
		_ = keeper.Close()
		return fmt.Errorf("initialise %s: %v", module, err)
	}
	proc.dir, proc.module, proc.keeper, proc.p = dir, module, keeper, p
	return nil
}

// initToken initialises the module's free slot as a token labelled label
// with a random SO PIN (discarded) and a random user PIN, which it returns.
// The caller holds proc.mu.
func initToken(label string) (string, error) {
	p := proc.p
	slots, err := p.GetSlotList(true)
	if err != nil {
		return "", fmt.Errorf("C_GetSlotList: %v", err)
	}
	free, found := uint(0), false
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil {
			return "", fmt.Errorf("C_GetTokenInfo(slot %d): %v", s, err)
		}
		if ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			if !found {
				free, found = s, true
			}
			continue
		}
		if ti.Label == label {
			return "", fmt.Errorf("a token labelled %q already exists in %s", label, proc.dir)
		}
	}
	if !found {
		return "", errors.New("the module has no free slot")
	}
	soPIN, pin := randomPIN(), randomPIN()
	if err := p.InitToken(free, soPIN, label); err != nil {
		return "", fmt.Errorf("C_InitToken: %v", err)
	}
	// SoftHSM2 moves an initialised token to a slot numbered after its
	// serial; find it again by label.
	slots, err = p.GetSlotList(true)
	if err != nil {
		return "", fmt.Errorf("C_GetSlotList: %v", err)
	}
	var slot []uint
	for _, s := range slots {
		if ti, err := p.GetTokenInfo(s); err == nil && ti.Label == label {
			slot = append(slot, s)
		}
	}
	if len(slot) != 1 {
		return "", fmt.Errorf("found %d tokens labelled %q after C_InitToken, want 1", len(slot), label)
	}
	sh, err := p.OpenSession(slot[0], pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return "", fmt.Errorf("C_OpenSession: %v", err)
	}
	defer p.CloseSession(sh)
	if err := p.Login(sh, pkcs11.CKU_SO, soPIN); err != nil {
		return "", fmt.Errorf("C_Login(SO): %v", err)
	}
	defer p.Logout(sh)
	if err := p.InitPIN(sh, pin); err != nil {
		return "", fmt.Errorf("C_InitPIN: %v", err)
	}
	return pin, nil
}

// randomPIN returns 26 random base32 characters (130 bits).
func randomPIN() string { return rand.Text() }

func readPIN(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}
