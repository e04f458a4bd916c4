package workers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/nats-io/nats.go/jetstream"
)

// Roles of a region in one replication run.
const (
	roleSource      = "source"
	roleDestination = "destination"
)

// replication is one run's state in the REPL bucket, keyed by its id. It
// stores the last message this region sent in the run so that a redelivered
// input can be answered with the identical bytes.
type replication struct {
	ID            string `json:"id"`
	Role          string `json:"role"`
	KeyID         string `json:"key_id"`
	Version       uint32 `json:"version"`
	Peer          string `json:"peer"`
	State         string `json:"state"`
	Reason        string `json:"reason,omitempty"`
	TimedOut      bool   `json:"timed_out,omitempty"`   // ended FAILED by the sweeper
	Attempt       int    `json:"attempt,omitempty"`     // source: 1 for the first run for this replica, 2 for its first retry …
	Epoch         uint64 `json:"epoch,omitempty"`       // source: the key's epoch when the run started
	WasCurrent    bool   `json:"was_current,omitempty"` // source: Version was the current version then
	NewReplica    bool   `json:"new_replica,omitempty"` // destination: the run created the replica
	KeySpec       string `json:"key_spec"`
	KeyUsage      string `json:"key_usage"`
	PrimaryRegion string `json:"primary_region"`
	Description   string `json:"description,omitempty"`
	// Destination: the policy the init carried for a replica it creates
	// (checked; empty: the region's default).
	Policy string `json:"policy,omitempty"`

	SrcKID []byte `json:"src_kid,omitempty"` // kid that signed init
	DstKID []byte `json:"dst_kid,omitempty"` // kid that signed offer
	RAKB   []byte `json:"rakb,omitempty"`    // public

	InitDigest     []byte `json:"init_digest,omitempty"`
	OfferDigest    []byte `json:"offer_digest,omitempty"`
	MaterialDigest []byte `json:"material_digest,omitempty"`
	ReceiptDigest  []byte `json:"receipt_digest,omitempty"`
	// The msg_id of each message the run accepted (destination: init and
	// material; source: offer and receipt), for the replay check: the same
	// msg_id with other bytes is refused as replayed_msg_id (checkRunMsg).
	InitMsgID     string `json:"init_msg_id,omitempty"`
	OfferMsgID    string `json:"offer_msg_id,omitempty"`
	MaterialMsgID string `json:"material_msg_id,omitempty"`
	ReceiptMsgID  string `json:"receipt_msg_id,omitempty"`
	ExpectedKC    []byte `json:"expected_kc,omitempty"` // source: its own key confirmation

	LastSent        []byte `json:"last_sent,omitempty"`
	LastSentSubject string `json:"last_sent_subject,omitempty"`
	LastSentMsgID   string `json:"last_sent_msg_id,omitempty"`

	CreatedAt   time.Time  `json:"created_at"`
	UpdatedAt   time.Time  `json:"updated_at"`
	ExpiresAt   time.Time  `json:"expires_at"`
	UsableAt    *time.Time `json:"usable_at,omitempty"`
	CompletedAt *time.Time `json:"completed_at,omitempty"`
}

func (r *replication) public() api.Replication {
	return api.Replication{
		ReplicationID: r.ID, Role: r.Role, KeyID: r.KeyID, Version: r.Version, Peer: r.Peer,
		State: r.State, Reason: r.Reason, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt,
		CompletedAt: r.CompletedAt,
	}
}

func (r *replication) ended() bool {
	return r.State == api.StateCompleted || r.State == api.StateFailed
}

// keyRecord is a key's record in the KEYS bucket: the metadata the API
// shows (api.Key) and the region's own bookkeeping for the lifecycle
// messages, which the API does not show (see lifecycle.go).
type keyRecord struct {
	api.Key

	// Primary: a version number a rotation reserved before generating it.
	Reserved   uint32    `json:"reserved,omitempty"`
	ReservedAt time.Time `json:"reserved_at,omitzero"`
	// Primary: the last key.sync sent to each replica (its epoch and when).
	SyncSent map[string]syncSent `json:"sync_sent,omitempty"`
	// Primary while UPDATING: the hand-over in progress.
	HandoverID      string    `json:"handover_id,omitempty"`
	HandoverSentAt  time.Time `json:"handover_sent_at,omitzero"`
	HandoverDigests [][]byte  `json:"handover_digests,omitempty"` // of the hand-overs sent, newest last
	// Replica: its own state changes (deletion scheduled, cancelled, done;
	// primary taken over) are numbered; the primary acknowledges them in
	// key.sync's ack_status_seq. StatusSentAt is when the last was sent.
	StatusSeq    uint64    `json:"status_seq,omitempty"`
	StatusAcked  uint64    `json:"status_acked,omitempty"`
	StatusSentAt time.Time `json:"status_sent_at,omitzero"`
	// Old primary after a hand-over: replicas still to be told of the new
	// primary, and when they were last told.
	Announce       []string  `json:"announce,omitempty"`
	AnnounceEpoch  uint64    `json:"announce_epoch,omitempty"`
	AnnounceSentAt time.Time `json:"announce_sent_at,omitzero"`
	// Replica: the dates of each version as this region saw them (see
	// versionDates); a new primary takes them over.
	VersionDates map[uint32]versionDates `json:"version_dates,omitempty"`
	// Deleted is a replica's tombstone: its versions are destroyed, and the
	// record stays until the primary has acknowledged the deletion.
	Deleted bool `json:"deleted,omitempty"`
	// Policy is the key's policy document in this region, as it was put
	// (docs/AUTHZ.md). Empty for a key stored before policies: it then has
	// the region's admins-only policy.
	Policy string `json:"policy,omitempty"`
	// Primary: the policy replicate-key asked for a replica, by region; it
	// travels in every init to that region (replicaPolicy).
	ReplicaPolicies map[string]string `json:"replica_policies,omitempty"`
}

// syncSent records a key.sync sent to a replica.
type syncSent struct {
	Epoch uint64    `json:"epoch"`
	At    time.Time `json:"at"`
}

// errNoChange tells update that fn decided not to write.
var errNoChange = errors.New("no change")

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
// compare-and-set, retrying when another worker wrote in between. fn may
// return errNoChange to leave the value as it is.
func updateJSON[T any](ctx context.Context, kv jetstream.KeyValue, key string, fn func(*T) error) (*T, error) {
	return updateJSONFrom(ctx, kv, key, nil, 0, fn)
}

// updateJSONFrom is updateJSON starting from a value the caller has just
// read (first, at revision rev), which saves a read when nobody wrote in
// between; first is handed over (fn changes it). A nil first reads.
func updateJSONFrom[T any](ctx context.Context, kv jetstream.KeyValue, key string, first *T, rev uint64, fn func(*T) error) (*T, error) {
	for attempt := 0; ; attempt++ {
		v := first
		first = nil
		if v == nil {
			var err error
			if v, rev, err = getJSON[T](ctx, kv, key); err != nil {
				return nil, err
			}
		}
		if err := fn(v); err != nil {
			if errors.Is(err, errNoChange) {
				return v, nil
			}
			return nil, err
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

// setReplica records the state of one replica in the primary's key record.
func setReplica(k *api.Key, r api.Replica) {
	for i := range k.Replicas {
		if k.Replicas[i].Region == r.Region {
			k.Replicas[i] = r
			return
		}
	}
	k.Replicas = append(k.Replicas, r)
}

func findReplica(k *api.Key, region string) (api.Replica, bool) {
	for _, r := range k.Replicas {
		if r.Region == region {
			return r, true
		}
	}
	return api.Replica{}, false
}

// loadKey reads a key's record; a key absent or deleted here is an API
// "not found".
func (w *Worker) loadKey(ctx context.Context, keyID string) (*keyRecord, error) {
	k, _, err := w.loadKeyRev(ctx, keyID)
	return k, err
}

// loadKeyRev is loadKey, also returning the record's revision.
func (w *Worker) loadKeyRev(ctx context.Context, keyID string) (*keyRecord, uint64, error) {
	k, rev, err := getJSON[keyRecord](ctx, w.res.Keys, keyID)
	if errors.Is(err, jetstream.ErrKeyNotFound) || err == nil && k.Deleted {
		return nil, 0, notFound("key %s not found in region %s", keyID, w.cfg.Region)
	}
	if err != nil {
		return nil, 0, err
	}
	normalize(k)
	return k, rev, nil
}

// updateKey is updateJSON for key records, normalised before fn sees them.
func (w *Worker) updateKey(ctx context.Context, keyID string, fn func(*keyRecord) error) (*keyRecord, error) {
	return w.updateKeyFrom(ctx, keyID, nil, 0, fn)
}

// updateKeyFrom is updateKey starting from a record just read (see
// updateJSONFrom).
func (w *Worker) updateKeyFrom(ctx context.Context, keyID string, first *keyRecord, rev uint64, fn func(*keyRecord) error) (*keyRecord, error) {
	return updateJSONFrom(ctx, w.res.Keys, keyID, first, rev, func(k *keyRecord) error {
		normalize(k)
		return fn(k)
	})
}

// updateLiveKey is updateKey for API requests: a key absent or deleted
// here is an API "not found", like loadKey.
func (w *Worker) updateLiveKey(ctx context.Context, keyID string, fn func(*keyRecord) error) (*keyRecord, error) {
	k, err := w.updateKey(ctx, keyID, func(k *keyRecord) error {
		if k.Deleted {
			return jetstream.ErrKeyNotFound
		}
		return fn(k)
	})
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, notFound("key %s not found in region %s", keyID, w.cfg.Region)
	}
	return k, err
}
