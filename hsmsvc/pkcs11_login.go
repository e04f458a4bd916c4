//go:build cgo

package hsmsvc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
)

// The pkcs11 backend (pkcs11.go): connecting, logging in, finding the
// slot, and the per-token locks.

// connect parses uri, reads the PIN, sets up crypto11 (which loads,
// initialises and logs in) and the second context with its session pool.
// It does not look for the RSK.
func connect(ctx context.Context, uri string, opts Options) (_ *pkcs11HSM, err error) {
	cfg, err := parsePKCS11URI(uri)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "hsm", "backend", "pkcs11")
	pin, err := resolvePIN(cfg, opts)
	if err != nil {
		return nil, err
	}

	module := cfg.modulePath
	st, err := os.Stat(module)
	if err != nil {
		return nil, fmt.Errorf("load PKCS#11 module: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("load PKCS#11 module %s: not a regular file", module)
	}
	// One spelling per module: crypto11 shares a module between contexts by
	// path, and a second spelling would initialise it twice.
	if real, err := filepath.EvalSymlinks(module); err == nil {
		module = real
	}

	c11cfg := &crypto11.Config{
		Path:            module,
		Pin:             pin,
		MaxSessions:     crypto11MaxSessions,
		PoolWaitTimeout: crypto11PoolWait,
	}
	if cfg.serial != "" {
		c11cfg.TokenSerial = cfg.serial
	} else {
		c11cfg.TokenLabel = cfg.token
	}
	c11, err := crypto11.Configure(c11cfg)
	if err != nil {
		return nil, configureError(cfg, module, err)
	}
	h := &pkcs11HSM{log: log, cfg: cfg, module: module, c11: c11, now: time.Now}
	defer func() {
		if err != nil {
			h.Close()
		}
	}()

	p := pkcs11.New(module)
	if p == nil {
		return nil, fmt.Errorf("load PKCS#11 module %s a second time: failed", module)
	}
	h.p = p
	// crypto11 initialised the module; ours only needs its function list.
	if err := p.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		return nil, fmt.Errorf("initialise PKCS#11 module %s: %w", module, err)
	}
	if h.slot, h.serial, err = findSlot(p, cfg); err != nil {
		return nil, err
	}
	h.tokenLock = tokenLockFor(p, h.slot, module, h.serial)
	h.pool = newSessionPool(p, h.slot, pkcs11MaxSessions)
	unlock := h.lockToken(false)
	err = h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		err := p.Login(sh, pkcs11.CKU_USER, pin)
		if err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
			return loginError(cfg, err)
		}
		return nil
	})
	unlock()
	if err != nil {
		return nil, err
	}
	return h, nil
}

// configureError turns a crypto11.Configure failure into an error that
// says what to fix. It never includes the PIN (crypto11's errors do not).
func configureError(cfg *pkcs11Config, module string, err error) error {
	var perr pkcs11.Error
	msg := err.Error()
	switch {
	case errors.As(err, &perr) && isLoginError(perr):
		return loginError(cfg, perr)
	case strings.Contains(msg, "could not find PKCS#11 token"):
		return fmt.Errorf("%s not found in PKCS#11 module %s (list the tokens with the module's tool, e.g. softhsm2-util --show-slots)", cfg.tokenName(), module)
	case strings.Contains(msg, "failed to open module"):
		return fmt.Errorf("load PKCS#11 module %s: it cannot be loaded as a PKCS#11 module (dlopen or C_GetFunctionList failed)", module)
	case errors.As(err, &perr) && perr == pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED:
		return fmt.Errorf("initialise PKCS#11 module %s: it was initialised in this process outside crypto11 (another spelling of its path?)", module)
	}
	return fmt.Errorf("open %s in PKCS#11 module %s: %v", cfg.tokenName(), module, err)
}

func isLoginError(e pkcs11.Error) bool {
	switch e {
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_LOCKED, pkcs11.CKR_PIN_EXPIRED,
		pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE, pkcs11.CKR_USER_PIN_NOT_INITIALIZED:
		return true
	}
	return false
}

func loginError(cfg *pkcs11Config, err error) error {
	var e pkcs11.Error
	if errors.As(err, &e) {
		switch e {
		case pkcs11.CKR_PIN_INCORRECT:
			return fmt.Errorf("log in to %s: wrong PIN (CKR_PIN_INCORRECT); correct the PIN (pin-source file or Options.PIN) rather than retry: tokens lock the PIN after a few failures", cfg.tokenName())
		case pkcs11.CKR_PIN_LOCKED:
			return fmt.Errorf("log in to %s: the user PIN is locked (CKR_PIN_LOCKED); the security officer must reset it", cfg.tokenName())
		}
	}
	return fmt.Errorf("log in to %s: %v", cfg.tokenName(), err)
}

// findSlot finds the one slot whose token matches cfg's label and serial.
func findSlot(p *pkcs11.Ctx, cfg *pkcs11Config) (slot uint, serial string, err error) {
	slots, err := p.GetSlotList(true)
	if err != nil {
		return 0, "", fmt.Errorf("C_GetSlotList: %w", err)
	}
	var match []uint
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil {
			return 0, "", fmt.Errorf("C_GetTokenInfo(slot %d): %w", s, err)
		}
		if (cfg.token == "" || ti.Label == cfg.token) && (cfg.serial == "" || ti.SerialNumber == cfg.serial) {
			match = append(match, s)
			serial = ti.SerialNumber
		}
	}
	switch len(match) {
	case 0:
		return 0, "", fmt.Errorf("%s not found (its label and serial do not match one token)", cfg.tokenName())
	case 1:
		return match[0], serial, nil
	}
	return 0, "", fmt.Errorf("%d tokens match %s; add serial= to the pkcs11 uri", len(match), cfg.tokenName())
}

// tokenLocks holds one lock per SoftHSM2 token (module and serial).
// SoftHSM2's file object store fails at random (CKR_GENERAL_ERROR,
// CKR_TEMPLATE_INCONSISTENT) when one process creates or destroys token
// objects while other threads of the process use the token
// (softhsm/SoftHSMv2#573; seen here with 2.6.1 even with the writes alone
// serialised). So on such a token an operation that creates or destroys
// token objects runs alone, and the others share the token. Other modules
// are trusted to be thread-safe, as PKCS#11 requires of a module
// initialised with CKF_OS_LOCKING_OK, and take no lock.
var tokenLocks sync.Map // string → *sync.RWMutex

// tokenLockFor returns the lock of the token in slot, or nil if the token
// does not need one.
func tokenLockFor(p *pkcs11.Ctx, slot uint, module, serial string) *sync.RWMutex {
	ti, err := p.GetTokenInfo(slot)
	if err != nil || !strings.HasPrefix(ti.ManufacturerID, "SoftHSM") {
		return nil
	}
	mu, _ := tokenLocks.LoadOrStore(module+"\x00"+serial, new(sync.RWMutex))
	return mu.(*sync.RWMutex)
}

// lockToken takes the token's lock, exclusive if write (the operation
// creates or destroys token objects), and returns its release.
func (h *pkcs11HSM) lockToken(write bool) (unlock func()) {
	return lockToken(h.tokenLock, write)
}

func lockToken(mu *sync.RWMutex, write bool) (unlock func()) {
	switch {
	case mu == nil:
		return func() {}
	case write:
		mu.Lock()
		return mu.Unlock
	default:
		mu.RLock()
		return mu.RUnlock
	}
}
