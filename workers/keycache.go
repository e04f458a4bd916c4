package workers

// The data plane's key cache. Encrypt, decrypt and generate-data-key (NATS
// API and KMS endpoint) need the key's record: its state, versions and
// policy. Reading it from the KEYS bucket and decoding it on every request
// was about a fifth of the CPU of an encrypt (docs/PERFORMANCE.md, session
// 5); this cache keeps the decoded records this worker read, and forgets
// one as soon as it may be stale:
//
//   - every write to the bucket by this worker (the bucket handle is
//     wrapped: Put, Create, Update, Delete, Purge) forgets the key when the
//     write returns, before its caller answers: a disable, a policy change
//     or a deletion is seen by this worker's next request;
//   - a watcher of the whole bucket (headers only) forgets a key on every
//     write by any worker of the region, as soon as the server delivers it;
//   - no record is used longer than keyCacheMaxAge after it was read, so
//     if the watcher falls behind or is down, a change made by another
//     worker takes effect within keyCacheMaxAge anyway;
//   - while the watcher is not running, nothing is cached.
//
// A read that began before a key was forgotten cannot put its (possibly
// older) record back: every forget bumps a generation, and a read records
// the generation it began at.
//
// Only the data plane reads through the cache; everything else (the
// control plane, replication) reads the bucket. Cached records are shared:
// their readers must not change them.

import (
	"context"
	"github.com/mrkrepl/mrkrepl/internal/repl"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// keyCacheMaxAge bounds how long a cached key record is used: the
// staleness bound of a change made by another worker of the region if the
// watcher does not deliver it.
const keyCacheMaxAge = time.Second

// maxCachedKeys bounds the cache; past it, it starts afresh.
const maxCachedKeys = 16384

type keyCache struct {
	mu      sync.Mutex
	m       map[string]keyCacheEntry
	gen     uint64 // bumped by every forget and flush
	flushed uint64 // gen of the last flush

	watching atomic.Bool // the watcher is running: the cache may be used
	once     sync.Once
	cancel   context.CancelFunc
	done     chan struct{}
}

type keyCacheEntry struct {
	k   *repl.Key // nil: forgotten at gen
	rev uint64
	gen uint64
	at  time.Time // when k was read
}

// get returns the cached record of id, if it is fresh.
func (c *keyCache) get(id string) (*repl.Key, bool) {
	if !c.watching.Load() {
		return nil, false
	}
	c.mu.Lock()
	e, ok := c.m[id]
	c.mu.Unlock()
	if !ok || e.k == nil || time.Since(e.at) > keyCacheMaxAge {
		return nil, false
	}
	return e.k, true
}

// begin returns the generation of a read about to start.
func (c *keyCache) begin() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// put caches k, read at revision rev by a read that began at generation
// g and at time at, unless the key was forgotten (or the cache flushed)
// since, or a newer revision is known.
func (c *keyCache) put(id string, k *repl.Key, rev, g uint64, at time.Time) {
	if !c.watching.Load() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if g < c.flushed {
		return
	}
	if e, ok := c.m[id]; ok && (e.gen > g || e.rev > rev) {
		return
	}
	if c.m == nil || len(c.m) >= maxCachedKeys {
		c.m = map[string]keyCacheEntry{}
		c.flushed = c.gen
	}
	c.m[id] = keyCacheEntry{k: k, rev: rev, gen: g, at: at}
}

// forget drops id's record; reads begun before cannot put theirs back. rev
// is the revision of the write, if known (0: not known).
func (c *keyCache) forget(id string, rev uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	if c.m == nil {
		c.m = map[string]keyCacheEntry{}
	}
	e := c.m[id]
	c.m[id] = keyCacheEntry{rev: max(rev, e.rev), gen: c.gen}
	if len(c.m) > maxCachedKeys {
		c.m = map[string]keyCacheEntry{}
		c.flushed = c.gen
	}
}

// flush forgets everything.
func (c *keyCache) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.flushed = c.gen
	c.m = nil
}

// start starts the watcher of kv, once; the cache is used from when it
// runs.
func (c *keyCache) start(kv jetstream.KeyValue, log *slog.Logger) {
	c.once.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		c.mu.Lock()
		c.cancel, c.done = cancel, done
		c.mu.Unlock()
		go func() {
			defer close(done)
			c.watch(ctx, kv, log)
		}()
	})
}

// stop stops the watcher (if it was started) and empties the cache.
func (c *keyCache) stop() {
	c.mu.Lock()
	cancel, done := c.cancel, c.done
	c.mu.Unlock()
	c.once.Do(func() {}) // no start after stop
	if cancel != nil {
		cancel()
		<-done
	}
	c.watching.Store(false)
	c.flush()
}

func (c *keyCache) watch(ctx context.Context, kv jetstream.KeyValue, log *slog.Logger) {
	for ctx.Err() == nil {
		kw, err := kv.WatchAll(ctx, jetstream.UpdatesOnly(), jetstream.MetaOnly())
		if err != nil {
			log.Debug("key cache: watcher not started; not caching", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		// Reads begun before the watcher may have missed a write it will
		// not deliver: they cannot fill the cache.
		c.flush()
		c.watching.Store(true)
	updates:
		for {
			select {
			case <-ctx.Done():
				break updates
			case e, ok := <-kw.Updates():
				if !ok {
					break updates
				}
				if e != nil {
					c.forget(e.Key(), e.Revision())
				}
			}
		}
		c.watching.Store(false)
		c.flush()
		_ = kw.Stop()
	}
}

// dataPlaneKey is loadKey for the data plane: from the cache when it holds
// a fresh record of keyID. The record is shared: do not change it.
func (w *Worker) dataPlaneKey(ctx context.Context, keyID string) (*repl.Key, error) {
	if k, ok := w.keys.get(keyID); ok {
		return k, nil
	}
	w.keys.start(w.res.Keys, w.log)
	g, at := w.keys.begin(), time.Now()
	k, rev, err := w.loadKeyRev(ctx, keyID)
	if err == nil {
		w.keys.put(keyID, k, rev, g, at)
	}
	return k, err
}

// forgettingKV is the worker's KEYS bucket: every write forgets the key's
// cached record when it returns, whatever its outcome.
type forgettingKV struct {
	jetstream.KeyValue
	c *keyCache
}

func (kv forgettingKV) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	rev, err := kv.KeyValue.Put(ctx, key, value)
	kv.c.forget(key, rev)
	return rev, err
}

func (kv forgettingKV) PutString(ctx context.Context, key string, value string) (uint64, error) {
	rev, err := kv.KeyValue.PutString(ctx, key, value)
	kv.c.forget(key, rev)
	return rev, err
}

func (kv forgettingKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	rev, err := kv.KeyValue.Create(ctx, key, value, opts...)
	kv.c.forget(key, rev)
	return rev, err
}

func (kv forgettingKV) Update(ctx context.Context, key string, value []byte, last uint64) (uint64, error) {
	rev, err := kv.KeyValue.Update(ctx, key, value, last)
	kv.c.forget(key, rev)
	return rev, err
}

func (kv forgettingKV) Delete(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	err := kv.KeyValue.Delete(ctx, key, opts...)
	kv.c.forget(key, 0)
	return err
}

func (kv forgettingKV) Purge(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	err := kv.KeyValue.Purge(ctx, key, opts...)
	kv.c.forget(key, 0)
	return err
}
