package workers

import (
	"encoding/json"
	"sync"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/repl"
)

// runCache keeps, for the runs in flight that this worker wrote last, the
// record as written and its KV revision, so that the next message of the
// run (the offer after the init, the receipt after the material …) starts
// from it instead of a KV read: one round trip less per message on the
// replication's critical path.
//
// It is a hint, never the authority: every state change is still a
// compare-and-set on the revision, which fails if another worker of the
// region wrote the run since (the entry is then dropped and the handler
// falls back to a read, as when two workers race without a cache); and a
// message refused on the strength of a cached record is judged again on a
// fresh read before it is dead-lettered (runFor). With one worker per
// region the cache is exact. Entries go when the run ends here; a run
// another worker ended stays until its deadline (after which it is read
// from the KV, as the sweeper may have ended it) or until the cache holds
// maxRuns (an arbitrary entry goes first: a miss only costs a read).
type runCache struct {
	mu   sync.Mutex
	runs map[string]cachedRun
	max  int
}

type cachedRun struct {
	raw      []byte // the record's JSON as written
	rev      uint64
	deadline time.Time // after it the sweeper may end the run
}

// maxCachedRuns bounds the cache: about 2 KB a run, so at most ~16 MB.
const maxCachedRuns = 8192

func newRunCache(max int) *runCache { return &runCache{runs: map[string]cachedRun{}, max: max} }

// get returns a fresh copy of the cached record of run id, unless the run
// is past its deadline (now after deadline): such a run may have been
// ended by another worker's sweeper, so it is read from the KV.
func (c *runCache) get(id string, now time.Time) (*repl.Run, uint64, bool) {
	c.mu.Lock()
	e, ok := c.runs[id]
	c.mu.Unlock()
	if !ok || now.After(e.deadline) {
		return nil, 0, false
	}
	rec := new(repl.Run)
	if err := json.Unmarshal(e.raw, rec); err != nil {
		return nil, 0, false
	}
	return rec, e.rev, true
}

// put records what this worker just wrote for run id at revision rev (an
// older revision than the one cached is ignored: two writes of this worker
// may return out of order); an ended run is dropped instead.
func (c *runCache) put(rec *repl.Run, raw []byte, rev uint64, deadline time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old, ok := c.runs[rec.ID]
	if ok && old.rev >= rev {
		return
	}
	if rec.Ended() {
		delete(c.runs, rec.ID)
		return
	}
	if !ok && len(c.runs) >= c.max {
		for id := range c.runs {
			delete(c.runs, id)
			break
		}
	}
	c.runs[rec.ID] = cachedRun{raw: raw, rev: rev, deadline: deadline}
}

// drop forgets run id; it reports whether it was cached.
func (c *runCache) drop(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.runs[id]
	delete(c.runs, id)
	return ok
}

func (c *runCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.runs)
}
