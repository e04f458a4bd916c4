package workers

import (
	"fmt"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/repl"
)

func TestRunCache(t *testing.T) {
	c := newRunCache(3)
	now := time.Now()
	later := now.Add(time.Minute)
	rec := &repl.Run{ID: "r1", State: repl.InitSent, InitDigest: []byte{1, 2}}
	c.put(rec, []byte(`{"id":"r1","state":"INIT_SENT","init_digest":"AQI="}`), 7, later)
	got, rev, ok := c.get("r1", now)
	if !ok || rev != 7 || got.State != repl.InitSent || len(got.InitDigest) != 2 {
		t.Fatalf("get r1 = %+v, %d, %v", got, rev, ok)
	}
	// Each get is a copy: changing it does not change the cache.
	got.State = repl.Completed
	got.InitDigest[0] = 9
	if again, _, _ := c.get("r1", now); again.State != repl.InitSent || again.InitDigest[0] != 1 {
		t.Fatalf("the cached record changed through a copy: %+v", again)
	}
	// An older revision does not replace a newer one.
	c.put(&repl.Run{ID: "r1", State: repl.InitSent}, []byte(`{"id":"r1","state":"OFFER_SENT"}`), 6, later)
	if again, rev, _ := c.get("r1", now); again.State != repl.InitSent || rev != 7 {
		t.Fatalf("an older write replaced the cached record: %+v at %d", again, rev)
	}
	// Past its deadline a run is not taken from the cache.
	if _, _, ok := c.get("r1", later.Add(time.Second)); ok {
		t.Fatal("a run past its deadline came from the cache")
	}
	// An ended run is dropped, not cached.
	c.put(&repl.Run{ID: "r1", State: repl.Completed}, []byte(`{"id":"r1","state":"COMPLETED"}`), 8, later)
	if _, _, ok := c.get("r1", now); ok {
		t.Fatal("an ended run stayed in the cache")
	}
	// Bounded: the fourth run pushes one out.
	for i := range 4 {
		id := fmt.Sprintf("r%d", i+2)
		c.put(&repl.Run{ID: id, State: repl.OfferSent}, []byte(`{"id":"`+id+`"}`), uint64(i), later)
	}
	if n := c.len(); n != 3 {
		t.Fatalf("%d runs cached, want at most 3", n)
	}
	if !c.drop("r5") || c.drop("r5") {
		t.Fatal("drop reports wrongly whether the run was cached")
	}
}
