package hsmsvc

// The soft backend: a software HSM in the same process, the embedded default
// and the reference for the PKCS#11 backend. Secrets live in this process's
// memory (and, for a persisted store, sealed on disk; see soft_store.go), so
// it is an HSM in interface only: it keeps key material behind KeyRefs and
// out of logs and errors, but it cannot protect it from the process itself.
//
// Lifetimes:
//   - RSK: the default one generated at the first open of a store, kept for
//     its life; more made by CreateRSK (rotation), kept for its life too.
//   - K: from GenerateKey or UnwrapFromPeer until DestroyKey.
//   - RAKB: from CreateAgreementKey until UnwrapFromPeer consumes it (after
//     storing K: a crash in between leaves both, and the retry succeeds),
//     DestroyAgreementKey removes it, or it expires. A persisted store keeps
//     RAKBs across restarts, so a replication survives a worker restart.
//     Expired RAKBs behave as absent and are removed when next touched, by
//     any CreateAgreementKey (which sweeps them all) and at open.
//   - RAKA, Z, RWK: within one call. Z, RWK and copies of K are cleared
//     with clear() after use; crypto/ecdh offers no way to zero a private
//     key, so RAKA and consumed RAKBs are dropped for the garbage collector.

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/hsmfault"
)

var errClosed = errors.New("soft hsm is closed")

// softHSM implements HSM in software. It is safe for concurrent use: mu
// guards the maps and the store; the expensive crypto runs outside it on
// copies.
type softHSM struct {
	log    *slog.Logger
	dir    string      // "" in memory
	store  *softStore  // nil in memory
	signer *softSigner // the default RSK
	now    func() time.Time

	mu      sync.Mutex
	closed  bool
	keys    map[KeyRef]*secretKey
	rakbs   map[string]*agreementKey // by replication id
	rotated []*softSigner            // RSKs made by CreateRSK, sorted by kid
}

var (
	_ HSM           = (*softHSM)(nil)
	_ RSKRotator    = (*softHSM)(nil)
	_ crypto.Signer = (*softSigner)(nil)
)

func openSoft(ctx context.Context, cfg softConfig, opts Options) (_ HSM, err error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "hsm", "backend", "soft")
	h := &softHSM{
		log:   log,
		dir:   cfg.dir,
		now:   time.Now,
		keys:  make(map[KeyRef]*secretKey),
		rakbs: make(map[string]*agreementKey),
	}
	defer func() {
		if err != nil {
			h.Close()
		}
	}()
	var rsk *ecdsa.PrivateKey
	if cfg.dir != "" {
		if h.store, err = openSoftStore(cfg, log); err != nil {
			return nil, err
		}
		err = h.store.load(func(name string, pt []byte) error {
			return h.loadObject(name, pt, &rsk)
		})
		if err != nil {
			return nil, fmt.Errorf("open soft hsm store %s: %w", cfg.dir, err)
		}
	}
	if rsk == nil {
		if len(h.keys) > 0 || len(h.rakbs) > 0 || len(h.rotated) > 0 {
			return nil, fmt.Errorf("open soft hsm store %s: it holds keys but no rsk object", cfg.dir)
		}
		if rsk, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader); err != nil {
			return nil, fmt.Errorf("open soft hsm: generate rsk: %v", err)
		}
		if h.store != nil {
			raw, err := rsk.Bytes()
			if err != nil {
				return nil, fmt.Errorf("open soft hsm: encode rsk: %v", err)
			}
			err = h.store.put(rskObjectName, raw)
			clear(raw)
			if err != nil {
				return nil, fmt.Errorf("open soft hsm: %v", err)
			}
		}
	}
	if h.signer, err = newSoftSigner(rsk); err != nil {
		return nil, fmt.Errorf("open soft hsm: %v", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("open soft hsm: %w", err)
	}
	log.Info("soft hsm opened", "dir", cfg.dir, "rsk_kid", hex.EncodeToString(h.signer.kid),
		"rotation_rsks", len(h.rotated), "keys", len(h.keys), "agreement_keys", len(h.rakbs))
	return h, nil
}

// Object names in the store.
const (
	rskObjectName  = "rsk"
	rskObjectPfx   = "rsk/" // + kid in hex: the RSKs made by CreateRSK
	keyObjectPfx   = "key/"
	rakbObjectPfx  = "rakb/"
	rakbObjectSize = 8 + 48 // expiry (Unix ns, big-endian) ‖ private scalar
)

func keyObjectName(ref KeyRef) string {
	return keyObjectPfx + ref.KeyID + "/" + strconv.FormatUint(uint64(ref.Version), 10)
}

func rakbObjectName(replicationID string) string { return rakbObjectPfx + replicationID }

// loadObject restores one object from the store at open.
func (h *softHSM) loadObject(name string, pt []byte, rsk **ecdsa.PrivateKey) error {
	switch {
	case name == rskObjectName:
		k, err := ecdsa.ParseRawPrivateKey(elliptic.P384(), pt)
		if err != nil {
			return fmt.Errorf("parse rsk: %v", err)
		}
		*rsk = k
	case strings.HasPrefix(name, rskObjectPfx):
		k, err := ecdsa.ParseRawPrivateKey(elliptic.P384(), pt)
		if err != nil {
			return fmt.Errorf("parse rsk: %v", err)
		}
		s, err := newSoftSigner(k)
		if err != nil {
			return err
		}
		if name != rskObjectPfx+hex.EncodeToString(s.kid) {
			return errors.New("the rsk's object name is not its kid")
		}
		h.rotated = append(h.rotated, s)
		slices.SortFunc(h.rotated, func(a, b *softSigner) int { return bytes.Compare(a.kid, b.kid) })
	case strings.HasPrefix(name, keyObjectPfx):
		id, v, _ := strings.Cut(strings.TrimPrefix(name, keyObjectPfx), "/")
		ver, err := strconv.ParseUint(v, 10, 32)
		ref := KeyRef{KeyID: id, Version: uint32(ver)}
		if err != nil || ref.Validate() != nil || keyObjectName(ref) != name {
			return errors.New("malformed key object name")
		}
		if len(pt) != KeySize {
			return fmt.Errorf("key is %d bytes, want %d", len(pt), KeySize)
		}
		h.keys[ref] = &secretKey{b: bytes.Clone(pt)}
	case strings.HasPrefix(name, rakbObjectPfx):
		id := strings.TrimPrefix(name, rakbObjectPfx)
		if checkReplicationID(id) != nil {
			return errors.New("malformed agreement key object name")
		}
		if len(pt) != rakbObjectSize {
			return fmt.Errorf("agreement key object is %d bytes, want %d", len(pt), rakbObjectSize)
		}
		expiresAt := time.Unix(0, int64(binary.BigEndian.Uint64(pt[:8])))
		if !h.now().Before(expiresAt) {
			h.log.Debug("removing expired agreement key", "replication_id", id)
			return h.store.remove(name)
		}
		priv, err := ecdh.P384().NewPrivateKey(pt[8:])
		if err != nil {
			return fmt.Errorf("parse agreement key: %v", err)
		}
		h.rakbs[id] = &agreementKey{priv: priv, expiresAt: expiresAt}
	default:
		return errors.New("unknown object")
	}
	return nil
}

func (h *softHSM) Backend() string { return "soft" }

func (h *softHSM) Signer() crypto.Signer { return h.signer }

// CreateRSK makes a new RSK, persists it (sealed, as object rsk/<kid>) and
// keeps it beside the default one.
func (h *softHSM) CreateRSK(ctx context.Context) (crypto.Signer, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("create rsk: %w", err)
	}
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("create rsk: %v", err)
	}
	s, err := newSoftSigner(k)
	if err != nil {
		return nil, fmt.Errorf("create rsk: %v", err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, fmt.Errorf("create rsk: %w", errClosed)
	}
	if h.store != nil {
		raw, err := k.Bytes()
		if err != nil {
			return nil, fmt.Errorf("create rsk: encode: %v", err)
		}
		err = h.store.put(rskObjectPfx+hex.EncodeToString(s.kid), raw)
		clear(raw)
		if err != nil {
			return nil, fmt.Errorf("create rsk: %v", err)
		}
	}
	h.rotated = append(h.rotated, s)
	slices.SortFunc(h.rotated, func(a, b *softSigner) int { return bytes.Compare(a.kid, b.kid) })
	h.log.Info("rsk created", "rsk_kid", hex.EncodeToString(s.kid))
	return s, nil
}

// RSKs returns the default RSK, then those CreateRSK made, by kid.
func (h *softHSM) RSKs(ctx context.Context) ([]crypto.Signer, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list rsks: %w", err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, fmt.Errorf("list rsks: %w", errClosed)
	}
	out := make([]crypto.Signer, 0, 1+len(h.rotated))
	out = append(out, h.signer)
	for _, s := range h.rotated {
		out = append(out, s)
	}
	return out, nil
}

// Close clears the key material held in memory and releases the store.
// Calls after Close fail; a second Close does nothing.
func (h *softHSM) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil
	}
	h.closed = true
	for _, k := range h.keys {
		k.destroy()
	}
	h.keys, h.rakbs = nil, nil
	if h.signer != nil {
		h.signer.priv.Store(nil)
	}
	for _, s := range h.rotated {
		s.priv.Store(nil)
	}
	if h.store != nil {
		return h.store.close()
	}
	return nil
}

// keyCopy returns a copy of ref's material, which the caller clears. A copy,
// so a concurrent DestroyKey cannot clear it under the caller.
func (h *softHSM) keyCopy(ctx context.Context, ref KeyRef) ([]byte, error) {
	if err := ref.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, errClosed
	}
	k, ok := h.keys[ref]
	if !ok {
		return nil, fmt.Errorf("key %s: %w", ref, ErrNotFound)
	}
	return bytes.Clone(k.b), nil
}

func (h *softHSM) GenerateKey(ctx context.Context, ref KeyRef) error {
	if err := ref.Validate(); err != nil {
		return fmt.Errorf("generate key: %v", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("generate key %s: %w", ref, err)
	}
	k := make([]byte, KeySize)
	rand.Read(k)
	if err := h.insertKey(ref, k); err != nil {
		clear(k)
		return fmt.Errorf("generate key %s: %w", ref, err)
	}
	h.log.Debug("key generated", "key", ref.String())
	return nil
}

// insertKey stores k (which it then owns) as ref, persisting it first.
func (h *softHSM) insertKey(ref KeyRef, k []byte) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return errClosed
	}
	if _, ok := h.keys[ref]; ok {
		return ErrExists
	}
	if h.store != nil {
		if err := h.store.put(keyObjectName(ref), k); err != nil {
			return err
		}
	}
	h.keys[ref] = &secretKey{b: k}
	return nil
}

func (h *softHSM) HasKey(ctx context.Context, ref KeyRef) (bool, error) {
	if err := ref.Validate(); err != nil {
		return false, fmt.Errorf("has key: %v", err)
	}
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("has key %s: %w", ref, err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false, fmt.Errorf("has key %s: %w", ref, errClosed)
	}
	_, ok := h.keys[ref]
	return ok, nil
}

func (h *softHSM) DestroyKey(ctx context.Context, ref KeyRef) error {
	if err := ref.Validate(); err != nil {
		return fmt.Errorf("destroy key: %v", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("destroy key %s: %w", ref, err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return fmt.Errorf("destroy key %s: %w", ref, errClosed)
	}
	k, ok := h.keys[ref]
	if !ok {
		return fmt.Errorf("destroy key %s: %w", ref, ErrNotFound)
	}
	if h.store != nil {
		if err := h.store.remove(keyObjectName(ref)); err != nil {
			return fmt.Errorf("destroy key %s: %v", ref, err)
		}
	}
	delete(h.keys, ref)
	k.destroy()
	h.log.Debug("key destroyed", "key", ref.String())
	return nil
}

func newGCM(k []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func (h *softHSM) Encrypt(ctx context.Context, ref KeyRef, plaintext, aad []byte) ([]byte, error) {
	k, err := h.keyCopy(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("encrypt: %w", err)
	}
	defer clear(k)
	aead, err := newGCM(k)
	if err != nil {
		return nil, fmt.Errorf("encrypt with %s: %v", ref, err)
	}
	out := make([]byte, gcmNonceSize, gcmNonceSize+len(plaintext)+gcmTagSize)
	rand.Read(out)
	return aead.Seal(out, out, plaintext, aad), nil
}

func (h *softHSM) Decrypt(ctx context.Context, ref KeyRef, ciphertext, aad []byte) ([]byte, error) {
	k, err := h.keyCopy(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("decrypt: %w", err)
	}
	defer clear(k)
	if len(ciphertext) < gcmNonceSize+gcmTagSize {
		return nil, fmt.Errorf("decrypt with %s: %w: %d bytes is shorter than nonce and tag", ref, ErrDecryptFailed, len(ciphertext))
	}
	aead, err := newGCM(k)
	if err != nil {
		return nil, fmt.Errorf("decrypt with %s: %v", ref, err)
	}
	pt, err := aead.Open(nil, ciphertext[:gcmNonceSize], ciphertext[gcmNonceSize:], aad)
	if err != nil {
		return nil, fmt.Errorf("decrypt with %s: %w", ref, ErrDecryptFailed)
	}
	return pt, nil
}

func (h *softHSM) KeyConfirmation(ctx context.Context, ref KeyRef, transcript []byte) ([]byte, error) {
	msg, err := keyConfirmationMessage(transcript)
	if err != nil {
		return nil, err
	}
	k, err := h.keyCopy(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("key confirmation: %w", err)
	}
	defer clear(k)
	mac, err := cmac(k, msg)
	if err != nil {
		return nil, fmt.Errorf("key confirmation with %s: %v", ref, err)
	}
	return mac, nil
}

func (h *softHSM) CreateAgreementKey(ctx context.Context, replicationID string, expiresAt time.Time) ([]byte, error) {
	if err := checkReplicationID(replicationID); err != nil {
		return nil, fmt.Errorf("create agreement key: %v", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("create agreement key for replication %s: %w", replicationID, err)
	}
	now := h.now()
	if !expiresAt.After(now) {
		return nil, fmt.Errorf("create agreement key for replication %s: expiry %s is not in the future", replicationID, expiresAt.UTC().Format(time.RFC3339Nano))
	}
	priv, err := ecdh.P384().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("create agreement key for replication %s: %v", replicationID, err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, fmt.Errorf("create agreement key for replication %s: %w", replicationID, errClosed)
	}
	h.sweepLocked(now)
	if _, ok := h.rakbs[replicationID]; ok {
		return nil, fmt.Errorf("create agreement key for replication %s: %w", replicationID, ErrExists)
	}
	if h.store != nil {
		obj := binary.BigEndian.AppendUint64(make([]byte, 0, rakbObjectSize), uint64(expiresAt.UnixNano()))
		obj = append(obj, priv.Bytes()...)
		err := h.store.put(rakbObjectName(replicationID), obj)
		clear(obj)
		if err != nil {
			return nil, fmt.Errorf("create agreement key for replication %s: %v", replicationID, err)
		}
	}
	h.rakbs[replicationID] = &agreementKey{priv: priv, expiresAt: expiresAt}
	h.log.Debug("agreement key created", "replication_id", replicationID, "expires_at", expiresAt)
	return priv.PublicKey().Bytes(), nil
}

// sweepLocked removes every expired RAKB. h.mu is held.
func (h *softHSM) sweepLocked(now time.Time) {
	for id, a := range h.rakbs {
		if now.Before(a.expiresAt) {
			continue
		}
		if h.store != nil {
			if err := h.store.remove(rakbObjectName(id)); err != nil {
				h.log.Warn("cannot remove expired agreement key", "replication_id", id, "error", err)
				continue
			}
		}
		delete(h.rakbs, id)
		h.log.Debug("expired agreement key removed", "replication_id", id)
	}
}

// agreementKeyLocked returns the RAKB of replicationID. An expired RAKB
// is removed and reported as ErrNotFound. h.mu is held.
func (h *softHSM) agreementKeyLocked(replicationID string) (*agreementKey, error) {
	a, ok := h.rakbs[replicationID]
	if !ok {
		return nil, fmt.Errorf("agreement key of replication %s: %w", replicationID, ErrNotFound)
	}
	if !h.now().Before(a.expiresAt) {
		if err := h.removeAgreementKeyLocked(replicationID); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("agreement key of replication %s: expired: %w", replicationID, ErrNotFound)
	}
	return a, nil
}

// removeAgreementKeyLocked removes the RAKB of replicationID, from disk
// first: if that fails the key stays. h.mu is held.
func (h *softHSM) removeAgreementKeyLocked(replicationID string) error {
	if h.store != nil {
		if err := h.store.remove(rakbObjectName(replicationID)); err != nil {
			return fmt.Errorf("agreement key of replication %s: %v", replicationID, err)
		}
	}
	delete(h.rakbs, replicationID)
	return nil
}

// dropAgreementKey removes a, the RAKB of replicationID, unless another
// call removed it already.
func (h *softHSM) dropAgreementKey(replicationID string, a *agreementKey) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return errClosed
	}
	if h.rakbs[replicationID] != a {
		return nil
	}
	return h.removeAgreementKeyLocked(replicationID)
}

func (h *softHSM) DestroyAgreementKey(ctx context.Context, replicationID string) error {
	if err := checkReplicationID(replicationID); err != nil {
		return fmt.Errorf("destroy agreement key: %v", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("destroy agreement key of replication %s: %w", replicationID, err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return fmt.Errorf("destroy agreement key of replication %s: %w", replicationID, errClosed)
	}
	if _, err := h.agreementKeyLocked(replicationID); err != nil {
		return fmt.Errorf("destroy %w", err)
	}
	if err := h.removeAgreementKeyLocked(replicationID); err != nil {
		return fmt.Errorf("destroy %w", err)
	}
	h.log.Debug("agreement key destroyed", "replication_id", replicationID)
	return nil
}

// WrapForPeer checks everything it is given before it uses the key: the peer
// point (full validation), the context (complete, its RAKB the peer point).
func (h *softHSM) WrapForPeer(ctx context.Context, req WrapRequest) (*WrapResult, error) {
	c := req.Context // a copy: RAKA is set on it, never on the caller's
	peer, err := parseP384Public(req.PeerPublicKey)
	if err != nil {
		return nil, fmt.Errorf("wrap for replication %s: %w", c.ReplicationID, err)
	}
	if err := c.validate(false); err != nil {
		return nil, fmt.Errorf("wrap for replication %s: %v", c.ReplicationID, err)
	}
	if !bytes.Equal(c.RAKB, req.PeerPublicKey) {
		return nil, fmt.Errorf("wrap for replication %s: context RAKB differs from the peer public key", c.ReplicationID)
	}
	ref := c.Ref()
	k, err := h.keyCopy(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("wrap for replication %s: %w", c.ReplicationID, err)
	}
	defer clear(k)

	raka, err := ecdh.P384().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("wrap %s for replication %s: generate RAKA: %v", ref, c.ReplicationID, err)
	}
	c.RAKA = raka.PublicKey().Bytes()
	z, err := raka.ECDH(peer)
	if err != nil {
		return nil, fmt.Errorf("wrap %s for replication %s: ecdh: %v", ref, c.ReplicationID, err)
	}
	defer clear(z)
	rwk := deriveRWK(z, c.appendFixedInfo(nil))
	defer clear(rwk)
	wrapped, err := kwpWrap(rwk, k)
	if err != nil {
		return nil, fmt.Errorf("wrap %s for replication %s: %v", ref, c.ReplicationID, err)
	}
	h.log.Debug("key wrapped for peer", "key", ref.String(), "replication_id", c.ReplicationID)
	return &WrapResult{RAKA: c.RAKA, Wrapped: wrapped}, nil
}

// UnwrapFromPeer first checks what needs no state (peer point, context,
// context RAKA = peer point); a request failing these leaves the RAKB in
// place. Then, in this order, so that a crash between any two steps leaves
// the RAKB (a retry unwraps again) or K (a retry finds it):
//
//  1. unwrap K with the RAKB (hsmfault.UnwrapDerived after it);
//  2. store K; if K is there already with the same material, that is
//     success, with other material ErrExists (hsmfault.UnwrapKeyStored);
//  3. destroy the RAKB (hsmfault.UnwrapRAKBDestroyed).
//
// An unwrap that fails on its input (ErrUnwrapFailed) or finds other
// material (ErrExists) destroys the RAKB too: it serves one replication,
// and no input fails once and succeeds later. A failure to store leaves it
// for a retry.
func (h *softHSM) UnwrapFromPeer(ctx context.Context, req UnwrapRequest) error {
	c := req.Context
	peer, err := parseP384Public(req.PeerPublicKey)
	if err != nil {
		return fmt.Errorf("unwrap for replication %s: %w", c.ReplicationID, err)
	}
	if err := c.Validate(); err != nil {
		return fmt.Errorf("unwrap for replication %s: %v", c.ReplicationID, err)
	}
	if !bytes.Equal(c.RAKA, req.PeerPublicKey) {
		return fmt.Errorf("unwrap for replication %s: context RAKA differs from the peer public key", c.ReplicationID)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("unwrap for replication %s: %w", c.ReplicationID, err)
	}
	ref := c.Ref()

	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return fmt.Errorf("unwrap for replication %s: %w", c.ReplicationID, errClosed)
	}
	rakb, err := h.agreementKeyLocked(c.ReplicationID)
	h.mu.Unlock()
	if err != nil {
		return fmt.Errorf("unwrap %s: %w", ref, err)
	}
	k, err := unwrapWith(rakb, peer, &c, req.Wrapped)
	if err != nil {
		if errors.Is(err, ErrUnwrapFailed) {
			h.dropAgreementKey(c.ReplicationID, rakb)
		}
		return fmt.Errorf("unwrap %s for replication %s: %w", ref, c.ReplicationID, err)
	}
	if err := hsmfault.After(ctx, hsmfault.UnwrapDerived); err != nil {
		clear(k)
		return fmt.Errorf("unwrap %s for replication %s: %w", ref, c.ReplicationID, err)
	}
	if err := h.storeUnwrapped(ref, k); err != nil {
		clear(k)
		if errors.Is(err, ErrExists) {
			h.dropAgreementKey(c.ReplicationID, rakb)
		}
		return fmt.Errorf("unwrap %s for replication %s: %w", ref, c.ReplicationID, err)
	}
	if err := hsmfault.After(ctx, hsmfault.UnwrapKeyStored); err != nil {
		return fmt.Errorf("unwrap %s for replication %s: %w", ref, c.ReplicationID, err)
	}
	if err := h.dropAgreementKey(c.ReplicationID, rakb); err != nil {
		// K is stored: a retry finds the RAKB and K, and succeeds.
		return fmt.Errorf("unwrap %s for replication %s: %v", ref, c.ReplicationID, err)
	}
	if err := hsmfault.After(ctx, hsmfault.UnwrapRAKBDestroyed); err != nil {
		return fmt.Errorf("unwrap %s for replication %s: %w", ref, c.ReplicationID, err)
	}
	h.log.Debug("key unwrapped from peer", "key", ref.String(), "replication_id", c.ReplicationID)
	return nil
}

// unwrapWith derives the RWK of c from the RAKB and the peer's RAKA and
// unwraps K, which the caller clears. ErrUnwrapFailed if the input does not
// open (or c's RAKB is not this RAKB).
func unwrapWith(rakb *agreementKey, peer *ecdh.PublicKey, c *KDFContext, wrapped []byte) ([]byte, error) {
	if !bytes.Equal(rakb.priv.PublicKey().Bytes(), c.RAKB) {
		return nil, fmt.Errorf("%w: context RAKB is not this replication's agreement key", ErrUnwrapFailed)
	}
	z, err := rakb.priv.ECDH(peer)
	if err != nil {
		return nil, fmt.Errorf("ecdh: %v", err)
	}
	defer clear(z)
	rwk := deriveRWK(z, c.appendFixedInfo(nil))
	defer clear(rwk)
	k, err := kwpUnwrap(rwk, wrapped)
	if err != nil {
		return nil, err
	}
	if len(k) != KeySize {
		clear(k)
		return nil, fmt.Errorf("%w: key is %d bytes, want %d", ErrUnwrapFailed, len(k), KeySize)
	}
	return k, nil
}

// storeUnwrapped stores k (which it then owns) as ref; if ref is there
// already, it is success when the material is the same (an unwrap
// repeated after a crash between storing K and destroying the RAKB) and
// ErrExists otherwise.
func (h *softHSM) storeUnwrapped(ref KeyRef, k []byte) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return errClosed
	}
	if old, ok := h.keys[ref]; ok {
		same := subtle.ConstantTimeCompare(old.b, k) == 1
		clear(k)
		if !same {
			return ErrExists
		}
		return nil
	}
	if h.store != nil {
		if err := h.store.put(keyObjectName(ref), k); err != nil {
			return err
		}
	}
	h.keys[ref] = &secretKey{b: k}
	return nil
}

// LogValue and String describe the HSM without any of its contents.
func (h *softHSM) LogValue() slog.Value {
	return slog.GroupValue(slog.String("backend", "soft"), slog.String("dir", h.dir))
}

func (h *softHSM) String() string {
	if h.dir == "" {
		return "soft hsm (in memory)"
	}
	return "soft hsm (" + h.dir + ")"
}

func (h *softHSM) Format(f fmt.State, _ rune) { io.WriteString(f, h.String()) }

// secretKey holds K. It prints and logs as a placeholder.
type secretKey struct{ b []byte }

func (k *secretKey) destroy() { clear(k.b); k.b = nil }

func (k secretKey) String() string             { return "[redacted AES-256 key]" }
func (k secretKey) GoString() string           { return k.String() }
func (k secretKey) Format(f fmt.State, _ rune) { io.WriteString(f, k.String()) }
func (k secretKey) LogValue() slog.Value       { return slog.StringValue(k.String()) }

// agreementKey holds a RAKB. It prints and logs as a placeholder.
type agreementKey struct {
	priv      *ecdh.PrivateKey
	expiresAt time.Time
}

func (a agreementKey) String() string             { return "[redacted P-384 agreement key]" }
func (a agreementKey) GoString() string           { return a.String() }
func (a agreementKey) Format(f fmt.State, _ rune) { io.WriteString(f, a.String()) }
func (a agreementKey) LogValue() slog.Value       { return slog.StringValue(a.String()) }

// softSigner is the crypto.Signer of the soft HSM's RSK. It never gives out
// the private key; after Close it refuses to sign.
type softSigner struct {
	priv atomic.Pointer[ecdsa.PrivateKey]
	pub  *ecdsa.PublicKey
	kid  []byte // SHA-256 of the SubjectPublicKeyInfo DER
}

// newSoftSigner wraps rsk after a self-test: a key is trusted only once it
// has made a signature that verifies.
func newSoftSigner(rsk *ecdsa.PrivateKey) (*softSigner, error) {
	if rsk.Curve != elliptic.P384() {
		return nil, errors.New("rsk is not on P-384")
	}
	spki, err := x509.MarshalPKIXPublicKey(&rsk.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("rsk: %v", err)
	}
	kid := sha256.Sum256(spki)
	s := &softSigner{pub: &rsk.PublicKey, kid: kid[:]}
	s.priv.Store(rsk)
	digest := sha512.Sum384([]byte("mrkrepl/1 soft hsm rsk self-test"))
	sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA384)
	if err != nil || !ecdsa.VerifyASN1(s.pub, digest[:], sig) {
		return nil, fmt.Errorf("rsk self-test failed: %v", err)
	}
	return s, nil
}

func (s *softSigner) Public() crypto.PublicKey {
	pub := *s.pub
	return &pub
}

// Sign returns an ASN.1 DER ECDSA signature of digest, which must be as long
// as opts' hash says (SHA-384 for ES384).
func (s *softSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	priv := s.priv.Load()
	if priv == nil {
		return nil, fmt.Errorf("sign with soft hsm rsk: %w", errClosed)
	}
	if opts != nil && opts.HashFunc() != 0 && len(digest) != opts.HashFunc().Size() {
		return nil, fmt.Errorf("sign with soft hsm rsk: digest is %d bytes, want %d for %v", len(digest), opts.HashFunc().Size(), opts.HashFunc())
	}
	if r == nil {
		r = rand.Reader
	}
	return ecdsa.SignASN1(r, priv, digest)
}

func (s *softSigner) String() string {
	return "soft hsm rsk (ECDSA P-384, kid " + hex.EncodeToString(s.kid) + ")"
}
func (s *softSigner) GoString() string           { return s.String() }
func (s *softSigner) Format(f fmt.State, _ rune) { io.WriteString(f, s.String()) }
func (s *softSigner) LogValue() slog.Value {
	return slog.GroupValue(slog.String("alg", "ES384"), slog.String("kid", hex.EncodeToString(s.kid)))
}
