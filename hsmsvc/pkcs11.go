//go:build cgo

package hsmsvc

// The pkcs11 backend: the region's HSM is a PKCS#11 token (SoftHSM2 in tests,
// a hardware HSM in production), named by an RFC 7512 URI (pkcs11_uri.go):
//
//	pkcs11:token=region-a?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/mrkrepl/pin&allow-host-kdf=true
//
// Two PKCS#11 contexts share the module. github.com/ThalesGroup/crypto11
// loads and initialises it, logs in, and holds the RSK and its signer.
// github.com/miekg/pkcs11 is used directly, on a second context, for what
// crypto11 lacks (C_DeriveKey with CKM_ECDH1_DERIVE, C_WrapKey and
// C_UnwrapKey with CKM_AES_KEY_WRAP_PAD, CKM_AES_CMAC) and for AES-GCM,
// whose crypto11 cipher.AEAD panics on token errors. The second context is
// set up after crypto11 (C_Initialize answers CKR_CRYPTOKI_ALREADY_INITIALIZED
// and C_Login CKR_USER_ALREADY_LOGGED_IN, both expected) and is never
// finalised: crypto11 owns the module's lifetime.
//
// Objects (docs/PKCS11.md has the attribute table):
//
//	RSK   ECDSA P-384 key pair, token objects, CKA_LABEL from object= (default
//	      "mrkrepl-rsk"), CKA_ID = kid; made only by InitPKCS11RSK.
//	      More RSKs, for rotation (CreateRSK): the same, with CKA_LABEL
//	      "<object>/rotation" (one label for all of them, told apart by
//	      CKA_ID = kid).
//	K     AES-256 secret key, token object, CKA_LABEL "mrkrepl-key:<key id>/v<version>".
//	RAKB  ECDH P-384 private key, token object (it survives a restart),
//	      CKA_LABEL "mrkrepl-rakb:<replication id>", CKA_ID = expiry as
//	      decimal Unix nanoseconds; destroyed by UnwrapFromPeer (after K is
//	      stored, so a crash in between leaves both),
//	      DestroyAgreementKey, or SweepExpired once expired. Its public half
//	      is a session object, read once and destroyed.
//	RAKA, Z, RWK  session objects, destroyed before the call returns.
//
// The KDF. If the token runs NIST SP 800-56C's one-step KDF with SHA-384
// inside C_DeriveKey (PKCS#11 3.0 CKD_SHA384_KDF_SP800) and a probe at Open
// shows it computes exactly deriveRWK, the RWK is derived in the token and Z
// never exists outside it. Otherwise (SoftHSM2 accepts only CKD_NULL) the
// backend derives Z as a short-lived extractable session object, reads it,
// runs deriveRWK on the host, creates the RWK as a sensitive session object
// and destroys both; K still never leaves the token unwrapped. That mode
// needs allow-host-kdf=true in the URI or Options.AllowHostKDF, is logged at
// Warn at Open, and is counted (HostKDFReporter).
//
// Concurrency: safe for concurrent use. Operations take a session each from
// a bounded pool (pkcs11MaxSessions); creations of one label are serialised
// within the process. Two processes sharing one token must not create the
// same key or RAKB at the same time (the workers' KV compare-and-set
// ensures it): PKCS#11 has no unique labels, and a lookup that finds two
// objects fails.
//
// Login: the PIN is sent once per Open, never retried, never logged or put
// in errors. Tokens lock a PIN after a few failures, so a wrong pin-source
// must be fixed, not retried in a loop. Login state is per process and
// token: while one Open of a token is live, another Open of the same token
// in the same process is not asked for a correct PIN (the module answers
// CKR_USER_ALREADY_LOGGED_IN).

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"

	"github.com/mrkrepl/mrkrepl/internal/hsmfault"
)

const (
	// pkcs11MaxSessions bounds the sessions, hence the operations in flight,
	// of the miekg context. crypto11 (signing) has its own pool.
	pkcs11MaxSessions = 32
	// crypto11MaxSessions and crypto11PoolWait bound crypto11's pool, so a
	// signature waits for a session at most that long instead of forever.
	crypto11MaxSessions = 16
	crypto11PoolWait    = 30 * time.Second

	keyLabelPrefix  = "mrkrepl-key:"
	rakbLabelPrefix = "mrkrepl-rakb:"

	// ckdSHA384KDFSP800 is CKD_SHA384_KDF_SP800 of PKCS#11 3.0 (pkcs11t.h),
	// which miekg/pkcs11 v1.1.2 predates.
	ckdSHA384KDFSP800 = 0x00000011
	// ckrAEADDecryptFailed is CKR_AEAD_DECRYPT_FAILED of PKCS#11 3.0.
	ckrAEADDecryptFailed = 0x00000035

	// wrappedKeySize is the length of AES-KWP(RWK, K) for a 32-byte K.
	wrappedKeySize = KeySize + 8
)

// p384Params is CKA_EC_PARAMS for P-384: the DER of OID 1.3.132.0.34.
var p384Params = []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22}

// pkcs11HSM implements HSM on a PKCS#11 token.
type pkcs11HSM struct {
	log    *slog.Logger
	cfg    *pkcs11Config
	module string // canonical module path
	c11    *crypto11.Context
	p      *pkcs11.Ctx
	slot   uint
	serial string
	pool   *sessionPool
	signer *pkcs11Signer
	now    func() time.Time

	hostKDF    bool
	hostKDFOps atomic.Uint64
	labels     keyedMutex
	handles    handleCache
	// serial is the token's operation lock on tokens that need one
	// (SoftHSM2), nil elsewhere. See tokenLocks.
	tokenLock *sync.RWMutex

	closeOnce sync.Once
}

var (
	_ HSM                 = (*pkcs11HSM)(nil)
	_ HostKDFReporter     = (*pkcs11HSM)(nil)
	_ AgreementKeySweeper = (*pkcs11HSM)(nil)
	_ RSKRotator          = (*pkcs11HSM)(nil)
	_ crypto.Signer       = (*pkcs11Signer)(nil)
)

// openPKCS11 is Open for pkcs11: URIs. It fails when the token holds no RSK
// (create one with InitPKCS11RSK) and when the token cannot run the KDF
// inside and host KDF is not allowed.
func openPKCS11(ctx context.Context, uri string, opts Options) (_ HSM, err error) {
	h, err := connect(ctx, uri, opts)
	if err != nil {
		return nil, apiErrorf("open pkcs11 hsm: %w", err)
	}
	defer func() {
		if err != nil {
			h.Close()
		}
	}()
	if h.signer, err = h.loadRSK(ctx); err != nil {
		return nil, apiErrorf("open pkcs11 hsm: %s: %w", h.cfg.tokenName(), err)
	}
	inToken, reason, err := h.probeInTokenKDF(ctx)
	if err != nil {
		return nil, apiErrorf("open pkcs11 hsm: %s: probe the in-token kdf: %w", h.cfg.tokenName(), err)
	}
	if !inToken {
		if !h.cfg.allowHostKDF && !opts.AllowHostKDF {
			return nil, fmt.Errorf("open pkcs11 hsm: %s cannot run the protocol's KDF (SP 800-56C one-step, SHA-384) inside the token (%s); "+
				"running it on the host reads the ECDH shared secret Z out of the token for each replication (K itself stays inside). "+
				"Allow that with allow-host-kdf=true in the pkcs11 uri (or Options.AllowHostKDF) if this token is only for tests or Z on the host is acceptable; "+
				"see docs/PKCS11.md", h.cfg.tokenName(), reason)
		}
		h.hostKDF = true
		h.log.Warn("pkcs11 token cannot run the KDF inside: the ECDH shared secret Z is read out to the host for the KDF of each replication (allow-host-kdf); K never leaves the token unwrapped",
			"reason", reason)
	}
	swept, err := h.SweepExpired(ctx)
	if err != nil {
		return nil, apiErrorf("open pkcs11 hsm: %w", err)
	}
	h.log.Info("pkcs11 hsm opened", "module", h.module, "token", h.cfg.token, "serial", h.serial,
		"rsk_label", h.cfg.rskLabel, "rsk_kid", hex.EncodeToString(h.signer.kid),
		"kdf", h.kdfMode(), "expired_agreement_keys_removed", swept)
	return h, nil
}

// InitPKCS11RSK creates the region's RSK in the token that uri names: an
// ECDSA P-384 key pair generated inside the token, private half sensitive
// and never extractable, CKA_LABEL from the URI's object= (default
// DefaultRSKLabel) and CKA_ID set to its kid (SHA-256 of the
// SubjectPublicKeyInfo). It returns the public key for the trust bundle.
//
// If the token already holds a key pair with that label, InitPKCS11RSK
// changes nothing and returns its public key together with an error
// matching ErrExists. It needs no allow-host-kdf.
func InitPKCS11RSK(ctx context.Context, uri string, opts Options) (crypto.PublicKey, error) {
	h, err := connect(ctx, uri, opts)
	if err != nil {
		return nil, apiErrorf("init pkcs11 rsk: %w", err)
	}
	defer h.Close()
	label := h.cfg.rskLabel
	if existing, err := h.createRSK(ctx); err != nil {
		return existing, apiErrorf("init pkcs11 rsk: %w", err)
	}
	signer, err := h.loadRSK(ctx) // finds it again and self-tests it
	if err != nil {
		return nil, apiErrorf("init pkcs11 rsk %q: %w", label, err)
	}
	h.log.Info("pkcs11 rsk created", "token", h.cfg.token, "rsk_label", label, "rsk_kid", hex.EncodeToString(signer.kid))
	return signer.Public(), nil
}

// createRSK generates the RSK unless a key pair with its label exists, in
// which case it returns that key's public half and ErrExists.
func (h *pkcs11HSM) createRSK(ctx context.Context) (existing crypto.PublicKey, err error) {
	label := h.cfg.rskLabel
	defer h.lockToken(true)()
	found, err := h.c11.FindKeyPairs(nil, []byte(label))
	if err != nil {
		return nil, fmt.Errorf("find key pairs labelled %q: %v", label, err)
	}
	switch len(found) {
	case 0:
	case 1:
		return found[0].Public(), fmt.Errorf("%s already holds a key pair labelled %q: %w", h.cfg.tokenName(), label, ErrExists)
	default:
		return nil, fmt.Errorf("%s holds %d key pairs labelled %q", h.cfg.tokenName(), len(found), label)
	}
	_, err = h.generateRSK(ctx, label)
	return nil, err
}

// rotationLabel is the CKA_LABEL of the RSKs CreateRSK makes.
func (h *pkcs11HSM) rotationLabel() string { return h.cfg.rskLabel + "/rotation" }

// CreateRSK generates another RSK in the token, labelled rotationLabel, with
// the attributes InitPKCS11RSK gives the default one.
func (h *pkcs11HSM) CreateRSK(ctx context.Context) (crypto.Signer, error) {
	if err := ctx.Err(); err != nil {
		return nil, apiErrorf("create rsk: %w", err)
	}
	label := h.rotationLabel()
	unlock := h.lockToken(true)
	s, err := h.generateRSK(ctx, label)
	unlock()
	if err != nil {
		return nil, apiErrorf("create rsk in %s: %w", h.cfg.tokenName(), err)
	}
	signer, err := h.newSigner(s, label)
	if err != nil {
		unlock := h.lockToken(true)
		_ = s.Delete()
		unlock()
		return nil, apiErrorf("create rsk in %s: %w", h.cfg.tokenName(), err)
	}
	h.log.Info("pkcs11 rsk created", "token", h.cfg.token, "rsk_label", label, "rsk_kid", hex.EncodeToString(signer.kid))
	return signer, nil
}

// RSKs returns the default RSK, then every key pair labelled rotationLabel
// in the token (looked up at each call, self-tested), by kid. A key pair
// that is not an ECDSA P-384 key or fails its self-test is left out and
// logged.
func (h *pkcs11HSM) RSKs(ctx context.Context) ([]crypto.Signer, error) {
	if err := ctx.Err(); err != nil {
		return nil, apiErrorf("list rsks: %w", err)
	}
	label := h.rotationLabel()
	unlock := h.lockToken(false)
	found, err := h.c11.FindKeyPairs(nil, []byte(label))
	unlock()
	if err != nil {
		return nil, apiErrorf("list rsks: find key pairs labelled %q: %v", label, err)
	}
	var extra []*pkcs11Signer
	for _, f := range found {
		s, err := h.newSigner(f, label)
		if err != nil {
			h.log.Warn("rsk left out", "rsk_label", label, "err", err)
			continue
		}
		if bytes.Equal(s.kid, h.signer.kid) || slices.ContainsFunc(extra, func(o *pkcs11Signer) bool { return bytes.Equal(o.kid, s.kid) }) {
			continue
		}
		extra = append(extra, s)
	}
	slices.SortFunc(extra, func(a, b *pkcs11Signer) int { return bytes.Compare(a.kid, b.kid) })
	out := make([]crypto.Signer, 0, 1+len(extra))
	out = append(out, h.signer)
	for _, s := range extra {
		out = append(out, s)
	}
	return out, nil
}

// generateRSK generates an RSK key pair labelled label inside the token,
// with CKA_ID its kid, and returns crypto11's signer of it. The caller
// holds the token's write lock.
func (h *pkcs11HSM) generateRSK(ctx context.Context, label string) (crypto11.Signer, error) {
	// A random CKA_ID first: the kid is known only once the key exists.
	tmpID := make([]byte, 16)
	rand.Read(tmpID)
	pubT, privT := crypto11.NewAttributeSet(), crypto11.NewAttributeSet()
	for _, a := range []struct {
		set   crypto11.AttributeSet
		typ   uint
		value any
	}{
		{pubT, pkcs11.CKA_ID, tmpID},
		{pubT, pkcs11.CKA_LABEL, label},
		{pubT, pkcs11.CKA_TOKEN, true},    // persistent
		{pubT, pkcs11.CKA_VERIFY, true},   // verifies the RSK's signatures
		{pubT, pkcs11.CKA_PRIVATE, false}, // public: readable without login
		{privT, pkcs11.CKA_ID, tmpID},
		{privT, pkcs11.CKA_LABEL, label},
		{privT, pkcs11.CKA_TOKEN, true},        // persistent
		{privT, pkcs11.CKA_PRIVATE, true},      // visible only after login
		{privT, pkcs11.CKA_SENSITIVE, true},    // CKA_VALUE never readable
		{privT, pkcs11.CKA_EXTRACTABLE, false}, // never leaves the token, not even wrapped
		{privT, pkcs11.CKA_SIGN, true},         // its one use: ES384 signatures
		{privT, pkcs11.CKA_DERIVE, false},      // not an ECDH key
	} {
		if err := a.set.Set(a.typ, a.value); err != nil {
			return nil, err
		}
	}
	s, err := h.c11.GenerateECDSAKeyPairWithAttributes(pubT, privT, elliptic.P384())
	if err != nil {
		return nil, fmt.Errorf("generate key pair %q: %v", label, err)
	}
	pub, ok := s.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P384() {
		_ = s.Delete()
		return nil, fmt.Errorf("generate key pair %q: the token made a %T, want an ECDSA P-384 key", label, s.Public())
	}
	kid, err := rskKID(pub)
	if err != nil {
		_ = s.Delete()
		return nil, fmt.Errorf("key pair %q: %v", label, err)
	}
	err = h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		for _, class := range []uint{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
			o, err := h.findOne(sh, "new rsk", []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
				pkcs11.NewAttribute(pkcs11.CKA_ID, tmpID),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			})
			if err != nil {
				return err
			}
			if err := h.p.SetAttributeValue(sh, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, kid)}); err != nil {
				return fmt.Errorf("C_SetAttributeValue(CKA_ID): %w", err)
			}
		}
		return nil
	})
	if err != nil {
		_ = s.Delete()
		return nil, fmt.Errorf("key pair %q: set CKA_ID to the kid: %w", label, err)
	}
	return s, nil
}

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

// apiErrorf is fmt.Errorf for errors leaving the backend: the message is
// kept whole, but only the sentinels callers branch on stay reachable with
// errors.Is; PKCS#11 return codes do not leak into the API as values.
func apiErrorf(format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	for _, s := range []error{ErrNotFound, ErrExists, ErrUnwrapFailed, ErrDecryptFailed, ErrInvalidPeerKey,
		errPKCS11Closed, context.Canceled, context.DeadlineExceeded, os.ErrNotExist} {
		if errors.Is(err, s) {
			return &apiError{msg: err.Error(), sentinel: s}
		}
	}
	return errors.New(err.Error())
}

type apiError struct {
	msg      string
	sentinel error
}

func (e *apiError) Error() string { return e.msg }
func (e *apiError) Unwrap() error { return e.sentinel }

// withSession runs f with a session of its own.
func (h *pkcs11HSM) withSession(ctx context.Context, f func(sh pkcs11.SessionHandle) error) error {
	sh, err := h.pool.get(ctx)
	if err != nil {
		return err
	}
	err = f(sh)
	h.pool.put(sh, err == nil || !isModuleError(err))
	return err
}

func (h *pkcs11HSM) Backend() string { return "pkcs11" }

func (h *pkcs11HSM) Signer() crypto.Signer { return h.signer }

// HostKDF reports whether Z is read out of the token for the KDF.
func (h *pkcs11HSM) HostKDF() bool { return h.hostKDF }

// HostKDFOps counts the KDF runs on the host since Open.
func (h *pkcs11HSM) HostKDFOps() uint64 { return h.hostKDFOps.Load() }

func (h *pkcs11HSM) kdfMode() string {
	if h.hostKDF {
		return "host"
	}
	return "token"
}

// Close waits for operations in flight, closes the sessions and releases
// the module (crypto11 finalises it when its last context closes). A second
// Close does nothing.
func (h *pkcs11HSM) Close() error {
	h.closeOnce.Do(func() {
		if h.pool != nil {
			h.pool.close()
		}
		if h.p != nil {
			// Never C_Finalize: crypto11 owns the module's lifetime.
			h.p.Destroy()
		}
		if h.c11 != nil {
			_ = h.c11.Close()
		}
	})
	return nil
}

// LogValue and String describe the HSM without secrets.
func (h *pkcs11HSM) LogValue() slog.Value {
	return slog.GroupValue(slog.String("backend", "pkcs11"), slog.String("module", h.module),
		slog.String("token", h.cfg.token), slog.String("serial", h.serial))
}

func (h *pkcs11HSM) String() string {
	return "pkcs11 hsm (" + h.cfg.tokenName() + " in " + h.module + ")"
}

func (h *pkcs11HSM) Format(f fmt.State, _ rune) { io.WriteString(f, h.String()) }

// --- objects ---

func keyLabel(ref KeyRef) string { return keyLabelPrefix + ref.String() }

func rakbLabel(replicationID string) string { return rakbLabelPrefix + replicationID }

// findObjects returns every object matching tmpl.
func (h *pkcs11HSM) findObjects(sh pkcs11.SessionHandle, tmpl []*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	if err := h.p.FindObjectsInit(sh, tmpl); err != nil {
		return nil, fmt.Errorf("C_FindObjectsInit: %w", err)
	}
	var all []pkcs11.ObjectHandle
	for {
		objs, _, err := h.p.FindObjects(sh, 64)
		if err != nil {
			_ = h.p.FindObjectsFinal(sh)
			return nil, fmt.Errorf("C_FindObjects: %w", err)
		}
		if len(objs) == 0 {
			break
		}
		all = append(all, objs...)
	}
	if err := h.p.FindObjectsFinal(sh); err != nil {
		return nil, fmt.Errorf("C_FindObjectsFinal: %w", err)
	}
	return all, nil
}

// findOne returns the one object matching tmpl: none is ErrNotFound,
// several is an error of its own (never pick one of them).
func (h *pkcs11HSM) findOne(sh pkcs11.SessionHandle, what string, tmpl []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	objs, err := h.findObjects(sh, tmpl)
	if err != nil {
		return 0, fmt.Errorf("find %s: %w", what, err)
	}
	switch len(objs) {
	case 0:
		return 0, fmt.Errorf("%s: %w", what, ErrNotFound)
	case 1:
		return objs[0], nil
	}
	return 0, fmt.Errorf("%s: %d objects carry its label, want one; remove the strays", what, len(objs))
}

func keyTemplate(ref KeyRef) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, keyLabel(ref)),
	}
}

// findKey returns the handle of K for ref.
func (h *pkcs11HSM) findKey(sh pkcs11.SessionHandle, ref KeyRef) (pkcs11.ObjectHandle, error) {
	return h.findLabelled(sh, "key "+ref.String(), keyLabel(ref), pkcs11.CKO_SECRET_KEY, keyTemplate(ref))
}

// handleCache remembers the handles of the objects the backend labels, by
// label. C_FindObjects costs time in proportion to the objects in the token
// on some modules (SoftHSM2: about 40 µs per object, so 40 ms per lookup in
// a token with a thousand keys); reading one attribute of one object does
// not.
type handleCache struct {
	mu sync.Mutex
	m  map[string]pkcs11.ObjectHandle
}

func (c *handleCache) get(label string) (pkcs11.ObjectHandle, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	o, ok := c.m[label]
	return o, ok
}

func (c *handleCache) put(label string, o pkcs11.ObjectHandle) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[string]pkcs11.ObjectHandle)
	}
	c.m[label] = o
}

func (c *handleCache) forget(label string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, label)
}

// cached returns the cached handle of label if it still names a token
// object of class with that label: another process may have destroyed the
// object, and a module may give its handle to another object.
func (h *pkcs11HSM) cached(sh pkcs11.SessionHandle, label string, class uint) (pkcs11.ObjectHandle, bool) {
	o, ok := h.handles.get(label)
	if !ok {
		return 0, false
	}
	attrs, err := h.p.GetAttributeValue(sh, o, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil),
	})
	if err == nil && string(attrs[0].Value) == label &&
		bytes.Equal(attrs[1].Value, pkcs11.NewAttribute(pkcs11.CKA_CLASS, class).Value) &&
		bytes.Equal(attrs[2].Value, []byte{1}) {
		return o, true
	}
	h.handles.forget(label)
	return 0, false
}

// findLabelled returns the one object matching tmpl, which selects class
// and label: from the cache if it is still valid there, else by a search
// (none is ErrNotFound, several an error), whose result is cached. A
// duplicate another process makes after an object is cached goes
// unnoticed until the next search.
func (h *pkcs11HSM) findLabelled(sh pkcs11.SessionHandle, what, label string, class uint, tmpl []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if o, ok := h.cached(sh, label, class); ok {
		return o, nil
	}
	o, err := h.findOne(sh, what, tmpl)
	if err != nil {
		return 0, err
	}
	h.handles.put(label, o)
	return o, nil
}

// newKeyAttributes is the template of K, generated or unwrapped: a token
// object that can encrypt, decrypt and MAC, and leaves the token only
// wrapped.
func newKeyAttributes(ref KeyRef) []*pkcs11.Attribute {
	label := keyLabel(ref)
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(label)),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),       // persistent: survives restarts
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),     // visible only after login
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),   // CKA_VALUE is never readable
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true), // only so C_WrapKey can wrap it under an RWK for a peer region (replication, and onward after a primary change)
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),     // Encrypt (AES-GCM)
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),     // Decrypt (AES-GCM)
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),        // KeyConfirmation (AES-CMAC)
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),     // confirmations are compared on the host
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),       // K wraps nothing
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),     // K unwraps nothing
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),     // nothing is derived from K
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false), // attributes fixed from creation
	}
}

func (h *pkcs11HSM) GenerateKey(ctx context.Context, ref KeyRef) error {
	if err := ref.Validate(); err != nil {
		return fmt.Errorf("generate key: %v", err)
	}
	if err := ctx.Err(); err != nil {
		return apiErrorf("generate key %s: %w", ref, err)
	}
	unlock := h.labels.lock(keyLabel(ref))
	defer unlock()
	defer h.lockToken(true)()
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		if err := h.absent(sh, ref); err != nil {
			return err
		}
		tmpl := append(newKeyAttributes(ref), pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, KeySize))
		o, err := h.p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, tmpl)
		if err != nil {
			return fmt.Errorf("C_GenerateKey(CKM_AES_KEY_GEN): %w", err)
		}
		if err := h.selfTestKey(sh, o); err != nil {
			return err
		}
		h.handles.put(keyLabel(ref), o)
		return nil
	})
	if err != nil {
		return apiErrorf("generate key %s: %w", ref, err)
	}
	h.log.Debug("key generated", "key", ref.String())
	return nil
}

// absent returns ErrExists if ref is in the token.
func (h *pkcs11HSM) absent(sh pkcs11.SessionHandle, ref KeyRef) error {
	if _, ok := h.cached(sh, keyLabel(ref), pkcs11.CKO_SECRET_KEY); ok {
		return ErrExists
	}
	objs, err := h.findObjects(sh, keyTemplate(ref))
	if err != nil {
		return err
	}
	if len(objs) > 0 {
		return ErrExists
	}
	return nil
}

// selfTestKey uses a new K before it is trusted: an AES-GCM round trip and
// a CMAC (every use the protocol makes of it). A key that fails is
// destroyed.
func (h *pkcs11HSM) selfTestKey(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle) (err error) {
	defer func() {
		if err != nil {
			_ = h.p.DestroyObject(sh, o)
		}
	}()
	msg := []byte("mrkrepl/1 pkcs11 key self-test")
	ct, err := h.gcmSeal(sh, o, msg, nil)
	if err != nil {
		return fmt.Errorf("self-test: %w", err)
	}
	pt, err := h.gcmOpen(sh, o, ct, nil)
	if err != nil || !bytes.Equal(pt, msg) {
		return fmt.Errorf("self-test: the key does not decrypt what it encrypted: %v", err)
	}
	if _, err := h.cmacSign(sh, o, msg); err != nil {
		return fmt.Errorf("self-test: %w", err)
	}
	return nil
}

func (h *pkcs11HSM) HasKey(ctx context.Context, ref KeyRef) (bool, error) {
	if err := ref.Validate(); err != nil {
		return false, fmt.Errorf("has key: %v", err)
	}
	if err := ctx.Err(); err != nil {
		return false, apiErrorf("has key %s: %w", ref, err)
	}
	var n int
	defer h.lockToken(false)()
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		objs, err := h.findObjects(sh, keyTemplate(ref))
		n = len(objs)
		return err
	})
	switch {
	case err != nil:
		return false, apiErrorf("has key %s: %w", ref, err)
	case n > 1:
		return false, fmt.Errorf("has key %s: %d objects carry its label, want one; remove the strays", ref, n)
	}
	return n == 1, nil
}

func (h *pkcs11HSM) DestroyKey(ctx context.Context, ref KeyRef) error {
	if err := ref.Validate(); err != nil {
		return fmt.Errorf("destroy key: %v", err)
	}
	if err := ctx.Err(); err != nil {
		return apiErrorf("destroy key %s: %w", ref, err)
	}
	unlock := h.labels.lock(keyLabel(ref))
	defer unlock()
	defer h.lockToken(true)()
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		o, err := h.findKey(sh, ref)
		if err != nil {
			return err
		}
		h.handles.forget(keyLabel(ref))
		if err := h.p.DestroyObject(sh, o); err != nil {
			return fmt.Errorf("C_DestroyObject: %w", err)
		}
		return nil
	})
	if err != nil {
		return apiErrorf("destroy key %s: %w", ref, err)
	}
	h.log.Debug("key destroyed", "key", ref.String())
	return nil
}

// --- AES-GCM and CMAC with K ---

// gcmSeal returns nonce ‖ ciphertext ‖ tag; the 96-bit nonce comes from the
// host's crypto/rand (random nonces: at most 2^32 encryptions per key,
// NIST SP 800-38D §8.3).
func (h *pkcs11HSM) gcmSeal(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, plaintext, aad []byte) ([]byte, error) {
	nonce := make([]byte, gcmNonceSize)
	rand.Read(nonce)
	params := pkcs11.NewGCMParams(nonce, aad, gcmTagSize*8)
	defer params.Free()
	if err := h.p.EncryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, o); err != nil {
		return nil, fmt.Errorf("C_EncryptInit(CKM_AES_GCM): %w", err)
	}
	ct, err := h.p.Encrypt(sh, plaintext)
	if err != nil {
		return nil, fmt.Errorf("C_Encrypt(CKM_AES_GCM): %w", err)
	}
	if len(ct) != len(plaintext)+gcmTagSize {
		return nil, fmt.Errorf("C_Encrypt(CKM_AES_GCM) returned %d bytes for %d, want %d", len(ct), len(plaintext), len(plaintext)+gcmTagSize)
	}
	return append(nonce, ct...), nil
}

// gcmOpen reverses gcmSeal; a ciphertext that does not authenticate is
// ErrDecryptFailed.
func (h *pkcs11HSM) gcmOpen(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, ciphertext, aad []byte) ([]byte, error) {
	if len(ciphertext) < gcmNonceSize+gcmTagSize {
		return nil, fmt.Errorf("%w: %d bytes is shorter than nonce and tag", ErrDecryptFailed, len(ciphertext))
	}
	params := pkcs11.NewGCMParams(ciphertext[:gcmNonceSize], aad, gcmTagSize*8)
	defer params.Free()
	if err := h.p.DecryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, o); err != nil {
		return nil, fmt.Errorf("C_DecryptInit(CKM_AES_GCM): %w", err)
	}
	pt, err := h.p.Decrypt(sh, ciphertext[gcmNonceSize:])
	if err != nil {
		var e pkcs11.Error
		if errors.As(err, &e) {
			switch e {
			// SoftHSM2 reports a bad tag as CKR_GENERAL_ERROR; PKCS#11 3.0
			// tokens as CKR_AEAD_DECRYPT_FAILED, older ones as
			// CKR_ENCRYPTED_DATA_INVALID.
			case pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_ENCRYPTED_DATA_INVALID,
				pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE, ckrAEADDecryptFailed:
				return nil, ErrDecryptFailed
			}
		}
		return nil, fmt.Errorf("C_Decrypt(CKM_AES_GCM): %w", err)
	}
	return pt, nil
}

// cmacSign returns the 16-byte CKM_AES_CMAC of msg under o.
func (h *pkcs11HSM) cmacSign(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, msg []byte) ([]byte, error) {
	if err := h.p.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_CMAC, nil)}, o); err != nil {
		return nil, fmt.Errorf("C_SignInit(CKM_AES_CMAC): %w", err)
	}
	mac, err := h.p.Sign(sh, msg)
	if err != nil {
		return nil, fmt.Errorf("C_Sign(CKM_AES_CMAC): %w", err)
	}
	if len(mac) != KeyConfirmationSize {
		return nil, fmt.Errorf("C_Sign(CKM_AES_CMAC) returned %d bytes, want %d", len(mac), KeyConfirmationSize)
	}
	return mac, nil
}

func (h *pkcs11HSM) Encrypt(ctx context.Context, ref KeyRef, plaintext, aad []byte) ([]byte, error) {
	if err := ref.Validate(); err != nil {
		return nil, fmt.Errorf("encrypt: %v", err)
	}
	var out []byte
	defer h.lockToken(false)()
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		o, err := h.findKey(sh, ref)
		if err != nil {
			return err
		}
		out, err = h.gcmSeal(sh, o, plaintext, aad)
		return err
	})
	if err != nil {
		return nil, apiErrorf("encrypt with %s: %w", ref, err)
	}
	return out, nil
}

func (h *pkcs11HSM) Decrypt(ctx context.Context, ref KeyRef, ciphertext, aad []byte) ([]byte, error) {
	if err := ref.Validate(); err != nil {
		return nil, fmt.Errorf("decrypt: %v", err)
	}
	var out []byte
	defer h.lockToken(false)()
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		o, err := h.findKey(sh, ref)
		if err != nil {
			return err
		}
		out, err = h.gcmOpen(sh, o, ciphertext, aad)
		return err
	})
	if err != nil {
		return nil, apiErrorf("decrypt with %s: %w", ref, err)
	}
	return out, nil
}

func (h *pkcs11HSM) KeyConfirmation(ctx context.Context, ref KeyRef, transcript []byte) ([]byte, error) {
	msg, err := keyConfirmationMessage(transcript)
	if err != nil {
		return nil, err
	}
	if err := ref.Validate(); err != nil {
		return nil, fmt.Errorf("key confirmation: %v", err)
	}
	var mac []byte
	defer h.lockToken(false)()
	err = h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		o, err := h.findKey(sh, ref)
		if err != nil {
			return err
		}
		mac, err = h.cmacSign(sh, o, msg)
		return err
	})
	if err != nil {
		return nil, apiErrorf("key confirmation with %s: %w", ref, err)
	}
	return mac, nil
}

// --- agreement keys ---

// ecPoint reads CKA_EC_POINT of a public key object and returns the
// uncompressed point, fully validated. PKCS#11 wants it DER-wrapped in an
// OCTET STRING; some tokens give it raw.
func (h *pkcs11HSM) ecPoint(sh pkcs11.SessionHandle, pub pkcs11.ObjectHandle) ([]byte, error) {
	attrs, err := h.p.GetAttributeValue(sh, pub, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	if err != nil {
		return nil, fmt.Errorf("C_GetAttributeValue(CKA_EC_POINT): %w", err)
	}
	v := attrs[0].Value
	point := v
	if len(v) != PublicKeySize || v[0] != 4 {
		rest, err := asn1.Unmarshal(v, &point)
		if err != nil || len(rest) != 0 {
			return nil, errors.New("CKA_EC_POINT is neither an uncompressed point nor one in a DER OCTET STRING")
		}
	}
	if _, err := parseP384Public(point); err != nil {
		return nil, fmt.Errorf("the token's own public key: %v", err)
	}
	return point, nil
}

// generateECDH makes an ECDH P-384 key pair in the token and returns the
// private half and the public point. The private half is a token object
// labelled label with CKA_ID id when token is true (RAKB), a session object
// otherwise (RAKA, the KDF probe). The public half is a session object,
// destroyed once its point is read: nothing needs it later (FixedInfo
// binds RAKB, so a context naming another one fails the unwrap), and one
// token object costs SoftHSM2 less than two.
func (h *pkcs11HSM) generateECDH(sh pkcs11.SessionHandle, token bool, label string, id []byte) (priv pkcs11.ObjectHandle, point []byte, err error) {
	pubT := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, p384Params),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),   // read once, then destroyed
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false), // public
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),  // not a signature key
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),  // the private half derives
	}
	privT := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, token),       // RAKB: survives a restart
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),      // visible only after login
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),    // CKA_VALUE is never readable
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false), // never leaves the token
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, true),       // its one use: ECDH
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),        // not a signature key
	}
	if label != "" {
		privT = append(privT, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label), pkcs11.NewAttribute(pkcs11.CKA_ID, id))
	}
	pub, priv, err := h.p.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)}, pubT, privT)
	if err != nil {
		return 0, nil, fmt.Errorf("C_GenerateKeyPair(CKM_EC_KEY_PAIR_GEN, P-384): %w", err)
	}
	point, err = h.ecPoint(sh, pub)
	if derr := h.p.DestroyObject(sh, pub); derr != nil && err == nil {
		err = fmt.Errorf("C_DestroyObject(public key): %w", derr)
	}
	if err != nil {
		_ = h.p.DestroyObject(sh, priv)
		return 0, nil, err
	}
	return priv, point, nil
}

// rakb is a RAKB found in the token.
type rakb struct {
	label     string
	priv      pkcs11.ObjectHandle
	expiresAt time.Time
}

// findRAKB returns the RAKB of replicationID, ErrNotFound if there is none.
func (h *pkcs11HSM) findRAKB(sh pkcs11.SessionHandle, replicationID string) (*rakb, error) {
	what := "agreement key of replication " + replicationID
	tmpl := func(class uint) []*pkcs11.Attribute {
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, rakbLabel(replicationID)),
		}
	}
	priv, err := h.findLabelled(sh, what, rakbLabel(replicationID), pkcs11.CKO_PRIVATE_KEY, tmpl(pkcs11.CKO_PRIVATE_KEY))
	if err != nil {
		return nil, err
	}
	exp, err := h.rakbExpiry(sh, priv)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return &rakb{label: rakbLabel(replicationID), priv: priv, expiresAt: exp}, nil
}

// rakbExpiry reads the expiry a RAKB carries in CKA_ID.
func (h *pkcs11HSM) rakbExpiry(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle) (time.Time, error) {
	attrs, err := h.p.GetAttributeValue(sh, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil)})
	if err != nil {
		return time.Time{}, fmt.Errorf("C_GetAttributeValue(CKA_ID): %w", err)
	}
	ns, err := strconv.ParseInt(string(attrs[0].Value), 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("CKA_ID %q is not an expiry in Unix nanoseconds", attrs[0].Value)
	}
	return time.Unix(0, ns), nil
}

// destroyRAKB destroys a RAKB's token object.
func (h *pkcs11HSM) destroyRAKB(sh pkcs11.SessionHandle, r *rakb) error {
	h.handles.forget(r.label)
	return h.destroy(sh, r.priv)
}

// destroy destroys an object.
func (h *pkcs11HSM) destroy(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle) error {
	if err := h.p.DestroyObject(sh, o); err != nil {
		return fmt.Errorf("C_DestroyObject: %w", err)
	}
	return nil
}

func (h *pkcs11HSM) CreateAgreementKey(ctx context.Context, replicationID string, expiresAt time.Time) ([]byte, error) {
	if err := checkReplicationID(replicationID); err != nil {
		return nil, fmt.Errorf("create agreement key: %v", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, apiErrorf("create agreement key for replication %s: %w", replicationID, err)
	}
	if !expiresAt.After(h.now()) {
		return nil, fmt.Errorf("create agreement key for replication %s: expiry %s is not in the future", replicationID, expiresAt.UTC().Format(time.RFC3339Nano))
	}
	unlock := h.labels.lock(rakbLabel(replicationID))
	defer unlock()
	defer h.lockToken(true)()
	var point []byte
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		old, err := h.findRAKB(sh, replicationID)
		switch {
		case err == nil && h.now().Before(old.expiresAt):
			return ErrExists
		case err == nil: // expired: replaced
			if err := h.destroyRAKB(sh, old); err != nil {
				return err
			}
		case !errors.Is(err, ErrNotFound):
			return err
		}
		id := []byte(strconv.FormatInt(expiresAt.UnixNano(), 10))
		var priv pkcs11.ObjectHandle
		priv, point, err = h.generateECDH(sh, true, rakbLabel(replicationID), id)
		if err == nil {
			h.handles.put(rakbLabel(replicationID), priv)
		}
		return err
	})
	if err != nil {
		return nil, apiErrorf("create agreement key for replication %s: %w", replicationID, err)
	}
	h.log.Debug("agreement key created", "replication_id", replicationID, "expires_at", expiresAt)
	return point, nil
}

func (h *pkcs11HSM) DestroyAgreementKey(ctx context.Context, replicationID string) error {
	if err := checkReplicationID(replicationID); err != nil {
		return fmt.Errorf("destroy agreement key: %v", err)
	}
	if err := ctx.Err(); err != nil {
		return apiErrorf("destroy agreement key of replication %s: %w", replicationID, err)
	}
	unlock := h.labels.lock(rakbLabel(replicationID))
	defer unlock()
	defer h.lockToken(true)()
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		r, err := h.findRAKB(sh, replicationID)
		if err != nil {
			return err
		}
		if err := h.destroyRAKB(sh, r); err != nil {
			return err
		}
		if !h.now().Before(r.expiresAt) {
			return fmt.Errorf("expired: %w", ErrNotFound)
		}
		return nil
	})
	if err != nil {
		return apiErrorf("destroy agreement key of replication %s: %w", replicationID, err)
	}
	h.log.Debug("agreement key destroyed", "replication_id", replicationID)
	return nil
}

// SweepExpired destroys every RAKB in the token whose expiry has passed.
func (h *pkcs11HSM) SweepExpired(ctx context.Context) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, apiErrorf("sweep expired agreement keys: %w", err)
	}
	var expired []string
	unlockRead := h.lockToken(false)
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		objs, err := h.findObjects(sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, true),
		})
		if err != nil {
			return err
		}
		now := h.now()
		for _, o := range objs {
			attrs, err := h.p.GetAttributeValue(sh, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)})
			if err != nil {
				return fmt.Errorf("C_GetAttributeValue(CKA_LABEL): %w", err)
			}
			id, ok := strings.CutPrefix(string(attrs[0].Value), rakbLabelPrefix)
			if !ok {
				continue
			}
			exp, err := h.rakbExpiry(sh, o)
			if err != nil {
				h.log.Warn("agreement key with an unreadable expiry left in place", "replication_id", id, "error", err)
				continue
			}
			if now.Before(exp) {
				continue
			}
			expired = append(expired, id)
		}
		return nil
	})
	unlockRead()
	if err != nil {
		return 0, apiErrorf("sweep expired agreement keys: %w", err)
	}
	n := 0
	for _, id := range expired {
		// Through the label lock and a fresh lookup: an UnwrapFromPeer may
		// have consumed it, or a CreateAgreementKey replaced it, meanwhile.
		err := func() error {
			unlock := h.labels.lock(rakbLabel(id))
			defer unlock()
			defer h.lockToken(true)()
			return h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
				r, err := h.findRAKB(sh, id)
				if err != nil || h.now().Before(r.expiresAt) {
					return nil
				}
				if err := h.destroyRAKB(sh, r); err != nil {
					return err
				}
				n++
				return nil
			})
		}()
		if err != nil {
			return n, apiErrorf("sweep expired agreement keys: replication %s: %w", id, err)
		}
		h.log.Debug("expired agreement key removed", "replication_id", id)
	}
	return n, nil
}

// --- the KDF ---

// rwkObject returns a session AES-256 key object: the RWK for the ECDH of
// priv with peer (an uncompressed point, validated by the caller), bound to
// fixedInfo, usable only for usage (CKA_WRAP or CKA_UNWRAP). The caller
// destroys it.
func (h *pkcs11HSM) rwkObject(sh pkcs11.SessionHandle, priv pkcs11.ObjectHandle, peer, fixedInfo []byte, usage uint) (pkcs11.ObjectHandle, error) {
	if h.hostKDF {
		return h.rwkOnHost(sh, priv, peer, fixedInfo, usage)
	}
	return h.rwkInToken(sh, priv, peer, fixedInfo, usage)
}

// rwkTemplate is the template of an RWK object, plus extra.
func rwkTemplate(usage uint, extra ...*pkcs11.Attribute) []*pkcs11.Attribute {
	return append([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),                       // session object: gone with the session at the latest
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),                      // visible only after login
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),                    // CKA_VALUE is never readable
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),                 // never leaves the token
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, usage == pkcs11.CKA_WRAP),     // the source wraps K with it
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, usage == pkcs11.CKA_UNWRAP), // the destination unwraps K with it
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
	}, extra...)
}

// rwkInToken derives the RWK inside the token: ECDH and the one-step KDF
// in one C_DeriveKey (PKCS#11 3.0 CKD_SHA384_KDF_SP800, FixedInfo as the
// shared data). Z never exists outside the token.
func (h *pkcs11HSM) rwkInToken(sh pkcs11.SessionHandle, priv pkcs11.ObjectHandle, peer, fixedInfo []byte, usage uint) (pkcs11.ObjectHandle, error) {
	mech := pkcs11.NewMechanism(pkcs11.CKM_ECDH1_DERIVE, pkcs11.NewECDH1DeriveParams(ckdSHA384KDFSP800, fixedInfo, peer))
	o, err := h.p.DeriveKey(sh, []*pkcs11.Mechanism{mech}, priv, rwkTemplate(usage, pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, rwkSize)))
	if err != nil {
		return 0, fmt.Errorf("C_DeriveKey(CKM_ECDH1_DERIVE, CKD_SHA384_KDF_SP800): %w", err)
	}
	return o, nil
}

// rwkOnHost derives the RWK with the KDF on the host (allow-host-kdf): Z is
// derived as a readable session object, read and destroyed at once; the
// RWK is computed in process memory and goes back as a sensitive session
// object. The host copies of Z and the RWK are cleared; the transient C
// copies miekg/pkcs11 makes are freed without being cleared.
func (h *pkcs11HSM) rwkOnHost(sh pkcs11.SessionHandle, priv pkcs11.ObjectHandle, peer, fixedInfo []byte, usage uint) (pkcs11.ObjectHandle, error) {
	mech := pkcs11.NewMechanism(pkcs11.CKM_ECDH1_DERIVE, pkcs11.NewECDH1DeriveParams(pkcs11.CKD_NULL, nil, peer))
	zObj, err := h.p.DeriveKey(sh, []*pkcs11.Mechanism{mech}, priv, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),      // session object, destroyed below
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),     // visible only after login
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),  // must be readable: the host runs the KDF
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true), // idem
	})
	if err != nil {
		return 0, fmt.Errorf("C_DeriveKey(CKM_ECDH1_DERIVE, CKD_NULL): %w", err)
	}
	attrs, err := h.p.GetAttributeValue(sh, zObj, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
	if derr := h.p.DestroyObject(sh, zObj); derr != nil && err == nil {
		err = derr
	}
	if err != nil {
		if attrs != nil {
			clear(attrs[0].Value)
		}
		return 0, fmt.Errorf("read and destroy Z: %w", err)
	}
	z := attrs[0].Value
	defer clear(z)
	if n := len(z); n == 0 || n > sharedSecretSize {
		return 0, fmt.Errorf("the token derived a %d-byte Z, want %d", n, sharedSecretSize)
	} else if n < sharedSecretSize {
		// Z is the x-coordinate as a fixed 48-byte string; a module that
		// drops its leading zero bytes gets them back here.
		padded := make([]byte, sharedSecretSize)
		copy(padded[sharedSecretSize-n:], z)
		clear(z)
		z = padded
		defer clear(padded)
	}
	rwk := deriveRWK(z, fixedInfo)
	defer clear(rwk)
	h.hostKDFOps.Add(1)
	o, err := h.p.CreateObject(sh, rwkTemplate(usage, pkcs11.NewAttribute(pkcs11.CKA_VALUE, rwk)))
	if err != nil {
		return 0, fmt.Errorf("C_CreateObject(RWK): %w", err)
	}
	return o, nil
}

// probeInTokenKDF finds out whether the token runs deriveRWK inside
// C_DeriveKey: it derives an RWK in the token (CKD_SHA384_KDF_SP800) from a
// throwaway token key and a throwaway host key, and compares the token's
// KWP wrap of a public probe key with the host's under the same RWK. Only an
// exact match counts. reason says why not.
func (h *pkcs11HSM) probeInTokenKDF(ctx context.Context) (ok bool, reason string, err error) {
	hostKey, err := ecdh.P384().GenerateKey(rand.Reader)
	if err != nil {
		return false, "", err
	}
	fixedInfo := []byte("mrkrepl/1 pkcs11 in-token kdf probe")
	probe := make([]byte, KeySize) // public probe value, not a secret
	rand.Read(probe)
	defer h.lockToken(false)()
	err = h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		priv, point, err := h.generateECDH(sh, false, "", nil)
		if err != nil {
			return err
		}
		defer h.destroy(sh, priv)
		rwkObj, derr := h.rwkInToken(sh, priv, hostKey.PublicKey().Bytes(), fixedInfo, pkcs11.CKA_WRAP)
		if derr != nil {
			reason = derr.Error()
			return nil // not supported; the module's error is the reason
		}
		defer h.p.DestroyObject(sh, rwkObj)
		probeObj, err := h.p.CreateObject(sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, probe),
		})
		if err != nil {
			return fmt.Errorf("C_CreateObject(probe key): %w", err)
		}
		defer h.p.DestroyObject(sh, probeObj)
		got, werr := h.p.WrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, rwkObj, probeObj)
		if werr != nil {
			reason = fmt.Sprintf("C_WrapKey(CKM_AES_KEY_WRAP_PAD) under the derived key: %v", werr)
			return nil
		}
		tokenPub, err := ecdh.P384().NewPublicKey(point)
		if err != nil {
			return err
		}
		z, err := hostKey.ECDH(tokenPub)
		if err != nil {
			return err
		}
		rwk := deriveRWK(z, fixedInfo)
		want, err := kwpWrap(rwk, probe)
		clear(z)
		clear(rwk)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, want) {
			reason = "CKD_SHA384_KDF_SP800 is accepted but does not compute SP 800-56C's one-step KDF as mrkrepl/1 specifies"
			return nil
		}
		ok = true
		return nil
	})
	return ok, reason, err
}

// --- replication ---

func (h *pkcs11HSM) WrapForPeer(ctx context.Context, req WrapRequest) (*WrapResult, error) {
	c := req.Context // a copy: RAKA is set on it, never on the caller's
	if _, err := parseP384Public(req.PeerPublicKey); err != nil {
		return nil, apiErrorf("wrap for replication %s: %w", c.ReplicationID, err)
	}
	if err := c.validate(false); err != nil {
		return nil, fmt.Errorf("wrap for replication %s: %v", c.ReplicationID, err)
	}
	if !bytes.Equal(c.RAKB, req.PeerPublicKey) {
		return nil, fmt.Errorf("wrap for replication %s: context RAKB differs from the peer public key", c.ReplicationID)
	}
	ref := c.Ref()
	var wrapped []byte
	defer h.lockToken(false)()
	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		k, err := h.findKey(sh, ref)
		if err != nil {
			return err
		}
		priv, raka, err := h.generateECDH(sh, false, "", nil) // RAKA
		if err != nil {
			return err
		}
		defer h.destroy(sh, priv)
		c.RAKA = raka
		rwk, err := h.rwkObject(sh, priv, req.PeerPublicKey, c.appendFixedInfo(nil), pkcs11.CKA_WRAP)
		if err != nil {
			return err
		}
		defer h.p.DestroyObject(sh, rwk)
		wrapped, err = h.p.WrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, rwk, k)
		if err != nil {
			return fmt.Errorf("C_WrapKey(CKM_AES_KEY_WRAP_PAD): %w", err)
		}
		if len(wrapped) != wrappedKeySize {
			return fmt.Errorf("C_WrapKey(CKM_AES_KEY_WRAP_PAD) returned %d bytes, want %d", len(wrapped), wrappedKeySize)
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, apiErrorf("wrap for replication %s: %w", c.ReplicationID, err)
		}
		return nil, apiErrorf("wrap %s for replication %s: %w", ref, c.ReplicationID, err)
	}
	h.log.Debug("key wrapped for peer", "key", ref.String(), "replication_id", c.ReplicationID)
	return &WrapResult{RAKA: c.RAKA, Wrapped: wrapped}, nil
}

// UnwrapFromPeer checks what needs no state first (peer point, context,
// context RAKA = peer point); a request failing these leaves the RAKB in
// place. Then, in this order, so that a crash between any two steps leaves
// the RAKB (a retry unwraps again) or K (a retry finds it):
//
//  1. derive the RWK with the RAKB's token object (hsmfault.UnwrapDerived);
//  2. C_UnwrapKey K as a token object (hsmfault.UnwrapKeyStored). If K is
//     there already, K is unwrapped as a session object instead and
//     compared with it by a CMAC over a fresh nonce: the same key is
//     success, another ErrExists;
//  3. destroy the RAKB's token object (hsmfault.UnwrapRAKBDestroyed).
//
// An unwrap that fails on its input (ErrUnwrapFailed) or finds other
// material (ErrExists) destroys the RAKB too: it serves one replication.
// Token errors before K is stored leave it for a retry.
func (h *pkcs11HSM) UnwrapFromPeer(ctx context.Context, req UnwrapRequest) error {
	c := req.Context
	if _, err := parseP384Public(req.PeerPublicKey); err != nil {
		return apiErrorf("unwrap for replication %s: %w", c.ReplicationID, err)
	}
	if err := c.Validate(); err != nil {
		return fmt.Errorf("unwrap for replication %s: %v", c.ReplicationID, err)
	}
	if !bytes.Equal(c.RAKA, req.PeerPublicKey) {
		return fmt.Errorf("unwrap for replication %s: context RAKA differs from the peer public key", c.ReplicationID)
	}
	if err := ctx.Err(); err != nil {
		return apiErrorf("unwrap for replication %s: %w", c.ReplicationID, err)
	}
	ref := c.Ref()
	unlockRAKB := h.labels.lock(rakbLabel(c.ReplicationID))
	defer unlockRAKB()
	unlockKey := h.labels.lock(keyLabel(ref))
	defer unlockKey()
	defer h.lockToken(true)()

	err := h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
		r, err := h.findRAKB(sh, c.ReplicationID)
		if err != nil {
			return err
		}
		// consumed ends the RAKB's use on a definitive outcome.
		consumed := func(err error) error {
			if derr := h.destroyRAKB(sh, r); derr != nil {
				h.log.Warn("agreement key not destroyed; it expires by itself", "replication_id", c.ReplicationID, "error", derr)
			}
			return err
		}
		if !h.now().Before(r.expiresAt) {
			return consumed(fmt.Errorf("agreement key of replication %s: expired: %w", c.ReplicationID, ErrNotFound))
		}
		existing, err := h.findKey(sh, ref)
		switch {
		case errors.Is(err, ErrNotFound):
			existing = 0
		case err != nil:
			return err
		}
		// A context RAKB that is not this RAKB's public key needs no check
		// of its own: FixedInfo binds RAKB, so the unwrap fails.
		if len(req.Wrapped) != wrappedKeySize {
			return consumed(fmt.Errorf("%w: wrapped key is %d bytes, want %d (AES-KWP of a %d-byte key)", ErrUnwrapFailed, len(req.Wrapped), wrappedKeySize, KeySize))
		}
		rwk, err := h.rwkObject(sh, r.priv, req.PeerPublicKey, c.appendFixedInfo(nil), pkcs11.CKA_UNWRAP)
		if err != nil {
			return err
		}
		defer h.p.DestroyObject(sh, rwk)
		if err := hsmfault.After(ctx, hsmfault.UnwrapDerived); err != nil {
			return err
		}
		tmpl := newKeyAttributes(ref)
		if existing != 0 {
			tmpl = checkKeyAttributes()
		}
		o, err := h.p.UnwrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, rwk, req.Wrapped, tmpl)
		if err != nil {
			// The module cannot tell a bad integrity check from other
			// failures (SoftHSM2: CKR_GENERAL_ERROR); the input is the
			// likely culprit, and the wrapped bytes are well-formed.
			return consumed(fmt.Errorf("%w (C_UnwrapKey(CKM_AES_KEY_WRAP_PAD): %v)", ErrUnwrapFailed, err))
		}
		if existing != 0 {
			defer h.p.DestroyObject(sh, o)
			same, err := h.sameKey(sh, existing, o)
			if err != nil {
				return err
			}
			if !same {
				return consumed(ErrExists)
			}
		} else {
			if err := h.selfTestKey(sh, o); err != nil {
				return err
			}
			h.handles.put(keyLabel(ref), o)
		}
		if err := hsmfault.After(ctx, hsmfault.UnwrapKeyStored); err != nil {
			return err
		}
		// K is stored: if this fails, a retry finds the RAKB and K, and
		// succeeds.
		if err := h.destroyRAKB(sh, r); err != nil {
			return err
		}
		return hsmfault.After(ctx, hsmfault.UnwrapRAKBDestroyed)
	})
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return apiErrorf("unwrap %s: %w", ref, err)
		}
		return apiErrorf("unwrap %s for replication %s: %w", ref, c.ReplicationID, err)
	}
	h.log.Debug("key unwrapped from peer", "key", ref.String(), "replication_id", c.ReplicationID)
	return nil
}

// checkKeyAttributes is the template of a session copy of K unwrapped
// only to compare it with the K in the token (sameKey): it can MAC and
// nothing else, and never leaves the token.
func checkKeyAttributes() []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
	}
}

// sameKey reports whether a and b hold the same AES key: their CMACs of a
// fresh nonce agree (key confirmation; neither leaves the token).
func (h *pkcs11HSM) sameKey(sh pkcs11.SessionHandle, a, b pkcs11.ObjectHandle) (bool, error) {
	nonce := make([]byte, 32)
	rand.Read(nonce)
	msg := append([]byte("mrkrepl/1 pkcs11 same key "), nonce...)
	ma, err := h.cmacSign(sh, a, msg)
	if err != nil {
		return false, err
	}
	mb, err := h.cmacSign(sh, b, msg)
	if err != nil {
		return false, err
	}
	return subtle.ConstantTimeCompare(ma, mb) == 1, nil
}

// --- the RSK ---

// loadRSK finds the RSK key pair by label (exactly one), checks it is ECDSA
// P-384 and self-tests it.
func (h *pkcs11HSM) loadRSK(ctx context.Context) (*pkcs11Signer, error) {
	label := h.cfg.rskLabel
	unlock := h.lockToken(false)
	found, err := h.c11.FindKeyPairs(nil, []byte(label))
	var attrs []*pkcs11.Attribute
	if err == nil && len(found) == 1 {
		// For a warning about an RSK imported or made by hand with weaker
		// attributes than InitPKCS11RSK sets.
		_ = h.withSession(ctx, func(sh pkcs11.SessionHandle) error {
			o, err := h.findOne(sh, "rsk", []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			})
			if err == nil {
				attrs, err = h.p.GetAttributeValue(sh, o, []*pkcs11.Attribute{
					pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
					pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
				})
			}
			return err
		})
	}
	unlock()
	if err != nil {
		return nil, fmt.Errorf("find the RSK %q: %v", label, err)
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("no RSK: no key pair labelled %q (with a CKA_ID and a matching public key); create it with `mrkrepl hsm init` (hsmsvc.InitPKCS11RSK)", label)
	case 1:
	default:
		return nil, fmt.Errorf("%d key pairs labelled %q; keep one, or name another with object= in the pkcs11 uri", len(found), label)
	}
	s, err := h.newSigner(found[0], label)
	if err != nil {
		return nil, err
	}
	if len(attrs) == 2 && (!bytes.Equal(attrs[0].Value, []byte{1}) || !bytes.Equal(attrs[1].Value, []byte{0})) {
		h.log.Warn("the RSK's private key is not CKA_SENSITIVE=true, CKA_EXTRACTABLE=false", "rsk_label", label)
	}
	return s, nil
}

// newSigner wraps crypto11's signer of an RSK key pair labelled label after
// checking that it is an ECDSA P-384 key and self-testing it.
func (h *pkcs11HSM) newSigner(c11 crypto11.Signer, label string) (*pkcs11Signer, error) {
	pub, ok := c11.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P384() {
		return nil, fmt.Errorf("the RSK %q is a %T, want an ECDSA P-384 key", label, c11.Public())
	}
	kid, err := rskKID(pub)
	if err != nil {
		return nil, fmt.Errorf("the RSK %q: %v", label, err)
	}
	s := &pkcs11Signer{s: c11, pub: pub, kid: kid, label: label, lock: h.tokenLock}
	if err := s.selfTest(); err != nil {
		return nil, err
	}
	return s, nil
}

// rskKID is the kid of an RSK: SHA-256 of its SubjectPublicKeyInfo DER.
func rskKID(pub *ecdsa.PublicKey) ([]byte, error) {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	kid := sha256.Sum256(spki)
	return kid[:], nil
}

// pkcs11Signer is the crypto.Signer of the token's RSK: crypto11's signer,
// with the digest length checked and a description without secrets.
type pkcs11Signer struct {
	s     crypto11.Signer
	pub   *ecdsa.PublicKey
	kid   []byte
	label string
	lock  *sync.RWMutex // the token's lock, see tokenLocks
}

// selfTest signs a fresh digest and verifies the signature with the public
// half: the two token objects must be one key pair before the key is
// trusted.
func (s *pkcs11Signer) selfTest() error {
	nonce := make([]byte, 32)
	rand.Read(nonce)
	digest := sha512.Sum384(append([]byte("mrkrepl/1 pkcs11 rsk self-test "), nonce...))
	sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA384)
	if err != nil {
		return fmt.Errorf("rsk self-test: %w", err)
	}
	if !ecdsa.VerifyASN1(s.pub, digest[:], sig) {
		return fmt.Errorf("rsk self-test: the signature of %q does not verify with its public key", s.label)
	}
	return nil
}

func (s *pkcs11Signer) Public() crypto.PublicKey {
	pub := *s.pub
	return &pub
}

// Sign returns an ASN.1 DER ECDSA signature of digest, which must be as long
// as opts' hash says (SHA-384 for ES384). The token draws the nonce; rand is
// not used.
func (s *pkcs11Signer) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts != nil && opts.HashFunc() != 0 && len(digest) != opts.HashFunc().Size() {
		return nil, fmt.Errorf("sign with pkcs11 rsk: digest is %d bytes, want %d for %v", len(digest), opts.HashFunc().Size(), opts.HashFunc())
	}
	unlock := lockToken(s.lock, false)
	sig, err := s.s.Sign(r, digest, opts)
	unlock()
	if err != nil {
		return nil, fmt.Errorf("sign with pkcs11 rsk %q: %v", s.label, err)
	}
	return sig, nil
}

func (s *pkcs11Signer) String() string {
	return "pkcs11 rsk " + strconv.Quote(s.label) + " (ECDSA P-384, kid " + hex.EncodeToString(s.kid) + ")"
}
func (s *pkcs11Signer) GoString() string           { return s.String() }
func (s *pkcs11Signer) Format(f fmt.State, _ rune) { io.WriteString(f, s.String()) }
func (s *pkcs11Signer) LogValue() slog.Value {
	return slog.GroupValue(slog.String("alg", "ES384"), slog.String("kid", hex.EncodeToString(s.kid)), slog.String("label", s.label))
}
