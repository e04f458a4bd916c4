package workers_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/internal/authz"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/nats-io/nats.go/jetstream"
)

// The data plane's key cache (keycache.go) must not let a changed key be
// used as it was: a policy change, a scheduled deletion or a disable made
// through this worker takes effect on the next request; one written to
// the bucket by anybody else (another worker of the region) within the
// cache's bound of one second, in practice as soon as the watcher
// delivers it.
func TestKeyCacheChangesTakeEffect(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{NoProxy: true, Regions: []string{"a-1", "b-1"}})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	app := p.Region("a-1").Client
	nc, err := p.Connect("a-1", "admin")
	if err != nil {
		t.Fatal(err)
	}
	admin := client.New(nc, "a-1")
	pt := []byte("hello")
	warm := func(keyID string) []byte {
		t.Helper()
		var blob []byte
		for range 5 { // fill the cache
			ct, err := app.Encrypt(ctx, keyID, pt, nil)
			if err != nil {
				t.Fatalf("encrypt: %v", err)
			}
			blob = ct.CiphertextBlob
		}
		return blob
	}

	// A policy that no longer names the application: denied at once.
	k1, err := app.CreateKey(ctx, api.CreateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	blob := warm(k1.KeyID)
	err = admin.PutKeyPolicy(ctx, api.PutKeyPolicyRequest{KeyID: k1.KeyID, Policy: string(authz.DefaultKeyPolicy(authz.Principal{Account: "MRK", User: "admin"}, nil))})
	if err != nil {
		t.Fatalf("put key policy: %v", err)
	}
	if _, err := app.Encrypt(ctx, k1.KeyID, pt, nil); !client.IsForbidden(err) {
		t.Fatalf("encrypt right after the policy change: %v, want forbidden", err)
	}
	if _, err := app.Decrypt(ctx, blob, nil); !client.IsForbidden(err) {
		t.Fatalf("decrypt right after the policy change: %v, want forbidden", err)
	}

	// A scheduled deletion: refused at once.
	k2, err := app.CreateKey(ctx, api.CreateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	warm(k2.KeyID)
	if _, err := admin.ScheduleKeyDeletion(ctx, k2.KeyID, 7); err != nil {
		t.Fatalf("schedule deletion: %v", err)
	}
	if _, err := app.Encrypt(ctx, k2.KeyID, pt, nil); err == nil {
		t.Fatal("encrypt right after the deletion was scheduled succeeded")
	}

	// Another writer of the bucket disables the key, then deletes it.
	k3, err := app.CreateKey(ctx, api.CreateKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	warm(k3.KeyID)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, layout.KeysBucket("a-1"))
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, k3.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		t.Fatal(err)
	}
	rec["enabled"] = false
	b, _ := json.Marshal(rec)
	if _, err := kv.Update(ctx, k3.KeyID, b, e.Revision()); err != nil {
		t.Fatal(err)
	}
	refusedWithin := func(what string) {
		t.Helper()
		start := time.Now()
		for {
			_, err := app.Encrypt(ctx, k3.KeyID, pt, nil)
			if err != nil {
				t.Logf("%s: refused after %s (%v)", what, time.Since(start).Round(time.Microsecond), err)
				return
			}
			// The bound is keyCacheMaxAge (1 s) after the write; the
			// watcher normally makes it milliseconds. Generous for CI.
			if time.Since(start) > 3*time.Second {
				t.Fatalf("%s: still encrypting %s after the write", what, time.Since(start))
			}
			time.Sleep(time.Millisecond)
		}
	}
	refusedWithin("disabled by another writer")

	rec["enabled"] = true
	b, _ = json.Marshal(rec)
	if _, err := kv.Put(ctx, k3.KeyID, b); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		if _, err := app.Encrypt(ctx, k3.KeyID, pt, nil); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("enabled again by another writer, still refused: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
	warm(k3.KeyID)
	if err := kv.Delete(ctx, k3.KeyID); err != nil {
		t.Fatal(err)
	}
	refusedWithin("deleted by another writer")
}
