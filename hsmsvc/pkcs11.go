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
	"context"
	"crypto"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
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
