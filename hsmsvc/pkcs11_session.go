//go:build cgo

package hsmsvc

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/miekg/pkcs11"
)

var errPKCS11Closed = errors.New("pkcs11 hsm is closed")

// sessionPool hands out PKCS#11 sessions, one per in-flight operation: a
// session is never used by two goroutines at once (PKCS#11 §5.1.2), and at
// most cap(slots) operations run at the same time; more wait, or give up
// when their context ends. Idle sessions are kept for reuse. A session is
// closed rather than reused after an operation fails inside the module, so
// a half-finished operation never leaks into the next user.
type sessionPool struct {
	p     *pkcs11.Ctx
	slot  uint
	slots chan struct{} // one element per session in use
	done  chan struct{} // closed by close

	mu     sync.Mutex
	idle   []pkcs11.SessionHandle
	closed bool
}

func newSessionPool(p *pkcs11.Ctx, slot uint, max int) *sessionPool {
	return &sessionPool{p: p, slot: slot, slots: make(chan struct{}, max), done: make(chan struct{})}
}

func (sp *sessionPool) get(ctx context.Context) (pkcs11.SessionHandle, error) {
	select {
	case sp.slots <- struct{}{}:
	case <-sp.done:
		return 0, errPKCS11Closed
	case <-ctx.Done():
		return 0, fmt.Errorf("wait for a pkcs11 session: %w", ctx.Err())
	}
	sp.mu.Lock()
	if sp.closed {
		sp.mu.Unlock()
		<-sp.slots
		return 0, errPKCS11Closed
	}
	if n := len(sp.idle); n > 0 {
		sh := sp.idle[n-1]
		sp.idle = sp.idle[:n-1]
		sp.mu.Unlock()
		return sh, nil
	}
	sp.mu.Unlock()
	// A new session shares the login state of the application's other
	// sessions on the token (crypto11 keeps one logged in).
	sh, err := sp.p.OpenSession(sp.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		<-sp.slots
		return 0, fmt.Errorf("C_OpenSession: %w", err)
	}
	return sh, nil
}

// put returns sh to the pool, or closes it when reuse is false or the pool
// is closed.
func (sp *sessionPool) put(sh pkcs11.SessionHandle, reuse bool) {
	sp.mu.Lock()
	if reuse && !sp.closed {
		sp.idle = append(sp.idle, sh)
		sp.mu.Unlock()
		<-sp.slots
		return
	}
	sp.mu.Unlock()
	_ = sp.p.CloseSession(sh)
	<-sp.slots
}

// close refuses new operations, waits for those in flight and closes every
// session.
func (sp *sessionPool) close() {
	sp.mu.Lock()
	if sp.closed {
		sp.mu.Unlock()
		return
	}
	sp.closed = true
	close(sp.done)
	sp.mu.Unlock()
	for range cap(sp.slots) {
		sp.slots <- struct{}{}
	}
	sp.mu.Lock()
	idle := sp.idle
	sp.idle = nil
	sp.mu.Unlock()
	for _, sh := range idle {
		_ = sp.p.CloseSession(sh)
	}
}

// isModuleError reports whether err came out of the PKCS#11 module, after
// which the session is not reused.
func isModuleError(err error) bool {
	var e pkcs11.Error
	return errors.As(err, &e)
}

// keyedMutex serialises check-then-create sequences per object label
// (PKCS#11 has no unique constraint on CKA_LABEL). It covers this process
// only; see the package doc for several processes on one token.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*keyedEntry
}

type keyedEntry struct {
	mu sync.Mutex
	n  int
}

// lock locks key and returns its unlock function.
func (k *keyedMutex) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.m == nil {
		k.m = make(map[string]*keyedEntry)
	}
	e := k.m[key]
	if e == nil {
		e = &keyedEntry{}
		k.m[key] = e
	}
	e.n++
	k.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		k.mu.Lock()
		if e.n--; e.n == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}
