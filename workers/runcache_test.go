package workers

import (
	"fmt"
	"testing"

	"github.com/mrkrepl/mrkrepl/api"
)

func TestRunCache(t *testing.T) {
	c := newRunCache(3)
	rec := &replication{ID: "r1", State: api.StateInitSent, InitDigest: []byte{1, 2}}
	c.put(rec, []byte(`{"id":"r1","state":"INIT_SENT","init_digest":"AQI="}`), 7)
	got, rev, ok := c.get("r1")
	if !ok || rev != 7 || got.State != api.StateInitSent || len(got.InitDigest) != 2 {
		t.Fatalf("get r1 = %+v, %d, %v", got, rev, ok)
	}
	// Each get is a copy: changing it does not change the cache.
	got.State = api.StateCompleted
	got.InitDigest[0] = 9
	if again, _, _ := c.get("r1"); again.State != api.StateInitSent || again.InitDigest[0] != 1 {
		t.Fatalf("the cached record changed through a copy: %+v", again)
	}
	// An ended run is dropped, not cached.
	c.put(&replication{ID: "r1", State: api.StateCompleted}, []byte(`{"id":"r1","state":"COMPLETED"}`), 8)
	if _, _, ok := c.get("r1"); ok {
		t.Fatal("an ended run stayed in the cache")
	}
	// Bounded: the fourth run pushes one out.
	for i := range 4 {
		id := fmt.Sprintf("r%d", i+2)
		c.put(&replication{ID: id, State: api.StateOfferSent}, []byte(`{"id":"`+id+`"}`), uint64(i))
	}
	if n := c.len(); n != 3 {
		t.Fatalf("%d runs cached, want at most 3", n)
	}
	if !c.drop("r5") || c.drop("r5") {
		t.Fatal("drop reports wrongly whether the run was cached")
	}
}
