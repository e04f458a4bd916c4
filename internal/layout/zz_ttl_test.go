package layout

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func TestZZPurgeTTL(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js := startServer(t)
	// old bucket
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "P", History: 1})
	if err != nil {
		t.Fatal(err)
	}
	kv.Put(ctx, "a", []byte("x"))
	kv.Delete(ctx, "a")
	// upgrade
	kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "P", History: 1, LimitMarkerTTL: time.Second})
	if err != nil {
		t.Fatal("upgrade:", err)
	}
	w, _ := kv.WatchAll(ctx, jetstream.UpdatesOnly())
	for i := range 100 {
		k := string(rune('b'+i%20)) + string(rune('a'+i/20))
		kv.Put(ctx, k, []byte("x"))
		if err := kv.Purge(ctx, k, jetstream.PurgeTTL(time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	for n < 200 {
		e := <-w.Updates()
		if e != nil {
			n++
			if n == 2 {
				t.Logf("op %v", e.Operation())
			}
		}
	}
	st, _ := js.Stream(ctx, "KV_P")
	info, _ := st.Info(ctx)
	t.Logf("before: msgs=%d subjects=%d del=%d cfg ttl=%v sdm=%v", info.State.Msgs, info.State.NumSubjects, info.State.NumDeleted, info.Config.AllowMsgTTL, info.Config.SubjectDeleteMarkerTTL)
	time.Sleep(4 * time.Second)
	info, _ = st.Info(ctx)
	t.Logf("after: msgs=%d subjects=%d del=%d first=%d last=%d", info.State.Msgs, info.State.NumSubjects, info.State.NumDeleted, info.State.FirstSeq, info.State.LastSeq)
	time.Sleep(3 * time.Second)
	info, _ = st.Info(ctx)
	t.Logf("after2: msgs=%d subjects=%d del=%d first=%d last=%d", info.State.Msgs, info.State.NumSubjects, info.State.NumDeleted, info.State.FirstSeq, info.State.LastSeq)
	keys, err := kv.ListKeys(ctx)
	c := 0
	for range keys.Keys() {
		c++
	}
	t.Logf("listkeys %d err %v", c, err)
}
