package workers

import (
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/repl"
)

// A read that began before a key was forgotten must not put its record
// back; one that began after may. Records older than keyCacheMaxAge are
// not used; nothing is cached while the watcher is not running.
func TestKeyCacheGenerations(t *testing.T) {
	var c keyCache
	k1 := &repl.Key{}
	k1.KeyID = "k1"
	now := time.Now()

	c.put("k1", k1, 1, c.begin(), now)
	if _, ok := c.get("k1"); ok {
		t.Fatal("cached while the watcher is not running")
	}
	c.watching.Store(true)

	g := c.begin()
	c.put("k1", k1, 1, g, now)
	if got, ok := c.get("k1"); !ok || got != k1 {
		t.Fatal("fresh record not cached")
	}

	// A read begins, the key is written (forgotten), the read ends with
	// the record as it was before the write.
	g = c.begin()
	c.forget("k1", 2)
	c.put("k1", k1, 1, g, now)
	if _, ok := c.get("k1"); ok {
		t.Fatal("a read begun before the forget put its record back")
	}
	// A read begun after the forget, of the new revision, may fill it.
	k2 := &repl.Key{}
	g = c.begin()
	c.put("k1", k2, 2, g, now)
	if got, ok := c.get("k1"); !ok || got != k2 {
		t.Fatal("a read begun after the forget was not cached")
	}
	// An older revision never replaces a newer one.
	c.put("k1", k1, 1, c.begin(), now)
	if got, _ := c.get("k1"); got != k2 {
		t.Fatal("an older revision replaced a newer one")
	}

	// Too old to use.
	c.put("old", k1, 1, c.begin(), now.Add(-keyCacheMaxAge-time.Millisecond))
	if _, ok := c.get("old"); ok {
		t.Fatal("a record older than keyCacheMaxAge was used")
	}

	// A flush (the watcher restarting) refuses reads begun before it.
	g = c.begin()
	c.flush()
	c.put("k3", k1, 1, g, now)
	if _, ok := c.get("k3"); ok {
		t.Fatal("a read begun before a flush filled the cache")
	}
	if _, ok := c.get("k1"); ok {
		t.Fatal("flush kept a record")
	}
}
