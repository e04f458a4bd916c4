package workers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/internal/repl"
	"github.com/nats-io/nats.go/jetstream"
)

// The storage schema is the core's: repl.Key in the KEYS bucket, repl.Run
// in the REPL bucket (internal/repl/model.go).

// getJSON reads key from kv. It returns jetstream.ErrKeyNotFound if absent.
func getJSON[T any](ctx context.Context, kv jetstream.KeyValue, key string) (*T, uint64, error) {
	e, err := kv.Get(ctx, key)
	if err != nil {
		return nil, 0, err
	}
	v := new(T)
	if err := json.Unmarshal(e.Value(), v); err != nil {
		return nil, 0, fmt.Errorf("decode %s/%s: %w", kv.Bucket(), key, err)
	}
	return v, e.Revision(), nil
}

// createJSON stores v under key if key is absent; jetstream.ErrKeyExists otherwise.
func createJSON[T any](ctx context.Context, kv jetstream.KeyValue, key string, v *T) (uint64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, err
	}
	return kv.Create(ctx, key, b)
}

// updateJSON applies fn to the current value of key and writes it back with
// compare-and-set, retrying when another worker wrote in between: on a
// lost compare-and-set fn is called again on the value read again (the
// core's transitions are pure, so this decides again). fn reports whether
// to write; a value fn leaves as it is is returned as read.
func updateJSON[T any](ctx context.Context, kv jetstream.KeyValue, key string, fn func(*T) (bool, error)) (*T, error) {
	return updateJSONFrom(ctx, kv, key, nil, 0, fn)
}

// updateJSONFrom is updateJSON starting from a value the caller has just
// read (first, at revision rev), which saves a read when nobody wrote in
// between; first is handed over (fn changes it). A nil first reads.
func updateJSONFrom[T any](ctx context.Context, kv jetstream.KeyValue, key string, first *T, rev uint64, fn func(*T) (bool, error)) (*T, error) {
	for attempt := 0; ; attempt++ {
		v := first
		first = nil
		if v == nil {
			var err error
			if v, rev, err = getJSON[T](ctx, kv, key); err != nil {
				return nil, err
			}
		}
		write, err := fn(v)
		if err != nil {
			return nil, err
		}
		if !write {
			return v, nil
		}
		b, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		_, err = kv.Update(ctx, key, b, rev)
		if err == nil {
			return v, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) || attempt >= 20 {
			return nil, fmt.Errorf("update %s/%s: %w", kv.Bucket(), key, err)
		}
		// Someone else wrote first (wrong last sequence): read again.
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Duration(attempt+1) * time.Millisecond):
		}
	}
}

// loadKey reads a key's record; a key absent or deleted here is an API
// "not found".
func (w *Worker) loadKey(ctx context.Context, keyID string) (*repl.Key, error) {
	k, _, err := w.loadKeyRev(ctx, keyID)
	return k, err
}

// loadKeyRev is loadKey, also returning the record's revision.
func (w *Worker) loadKeyRev(ctx context.Context, keyID string) (*repl.Key, uint64, error) {
	k, rev, err := getJSON[repl.Key](ctx, w.res.Keys, keyID)
	if errors.Is(err, jetstream.ErrKeyNotFound) || err == nil && k.Deleted {
		return nil, 0, notFound("key %s not found in region %s", keyID, w.cfg.Region)
	}
	if err != nil {
		return nil, 0, err
	}
	k.Normalize()
	return k, rev, nil
}

// updateKey is updateJSON for key records, normalised before fn sees them.
func (w *Worker) updateKey(ctx context.Context, keyID string, fn func(*repl.Key) (bool, error)) (*repl.Key, error) {
	return w.updateKeyFrom(ctx, keyID, nil, 0, fn)
}

// updateKeyFrom is updateKey starting from a record just read (see
// updateJSONFrom).
func (w *Worker) updateKeyFrom(ctx context.Context, keyID string, first *repl.Key, rev uint64, fn func(*repl.Key) (bool, error)) (*repl.Key, error) {
	return updateJSONFrom(ctx, w.res.Keys, keyID, first, rev, func(k *repl.Key) (bool, error) {
		k.Normalize()
		return fn(k)
	})
}

// updateLiveKey is updateKey for API requests: a key absent or deleted
// here is an API "not found", like loadKey.
func (w *Worker) updateLiveKey(ctx context.Context, keyID string, fn func(*repl.Key) (bool, error)) (*repl.Key, error) {
	k, err := w.updateKey(ctx, keyID, func(k *repl.Key) (bool, error) {
		if k.Deleted {
			return false, jetstream.ErrKeyNotFound
		}
		return fn(k)
	})
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, notFound("key %s not found in region %s", keyID, w.cfg.Region)
	}
	return k, err
}

// publicHoldsAny is repl.Key.HoldsAny on the API's view of a key (for
// callers that hold only that, such as the KMS front end's metadata).
func publicHoldsAny(k *api.Key, region string) bool {
	for _, d := range k.VersionDetails {
		if slices.Contains(d.ReplicatedTo, region) {
			return true
		}
	}
	return false
}
