// Package inflight tracks the goroutines a component starts for work in
// flight, so that stopping it can wait for them. Unlike a bare
// sync.WaitGroup, it refuses new work once stopping has begun: a consumer
// callback that arrives while Stop waits (JetStream may still deliver one
// after its consume context was stopped) would otherwise call Add
// concurrently with Wait, which the WaitGroup forbids.
package inflight

import "sync"

// Group is a set of goroutines doing work in flight. The zero value is ready.
type Group struct {
	mu     sync.RWMutex
	closed bool
	wg     sync.WaitGroup
}

// Go runs fn on a new goroutine and reports true, or reports false without
// running it once Close has been called.
func (g *Group) Go(fn func()) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.closed {
		return false
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		fn()
	}()
	return true
}

// Do runs fn on the calling goroutine, counted as work in flight, and
// reports true, or reports false without running it once Close has been
// called.
func (g *Group) Do(fn func()) bool {
	g.mu.RLock()
	if g.closed {
		g.mu.RUnlock()
		return false
	}
	g.wg.Add(1)
	g.mu.RUnlock()
	defer g.wg.Done()
	fn()
	return true
}

// Close refuses new work and waits for the work in flight to end.
func (g *Group) Close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.wg.Wait()
}
