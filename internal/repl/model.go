package repl

import (
	"slices"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
)

// Role is a region's part in one run.
type Role string

const (
	Source      Role = "source"
	Destination Role = "destination"
)

// RunState is a run's state. A source run goes InitSent → MaterialSent →
// Completed (or Failed); a destination run goes OfferSent → Completed (or
// Failed).
type RunState string

const (
	InitSent     RunState = api.StateInitSent
	OfferSent    RunState = api.StateOfferSent
	MaterialSent RunState = api.StateMaterialSent
	Completed    RunState = api.StateCompleted
	Failed       RunState = api.StateFailed
)

// KeyRole is a key's role in a region: its primary, or a replica.
type KeyRole string

const (
	Primary     KeyRole = api.RolePrimary
	ReplicaRole KeyRole = api.RoleReplica
)

// KeyState is a key's state in its own region.
type KeyState string

const (
	KeyEnabled         KeyState = api.KeyStateEnabled
	KeyUpdating        KeyState = api.KeyStateUpdating // its primary region is changing
	KeyPendingDeletion KeyState = api.KeyStatePendingDeletion
)

// ReplicaState is the state the primary records for one replica. It is a
// type of its own: a key's ENABLED is not a replica's ENABLED.
type ReplicaState string

const (
	ReplicaCreating        ReplicaState = api.ReplicaCreating
	ReplicaEnabled         ReplicaState = api.ReplicaEnabled
	ReplicaUpdating        ReplicaState = api.ReplicaUpdating
	ReplicaPendingDeletion ReplicaState = api.ReplicaPendingDeletion
	ReplicaFailed          ReplicaState = api.ReplicaFailed
)

// VersionState is the state of one version of a key.
type VersionState string

const (
	VersionStaged   VersionState = api.VersionStaged
	VersionCurrent  VersionState = api.VersionCurrent
	VersionPrevious VersionState = api.VersionPrevious
)

// Run is one run's record in the REPL bucket, keyed by its id. It stores
// the last message this region sent in the run so that a redelivered input
// can be answered with the identical bytes.
type Run struct {
	ID            string   `json:"id"`
	Role          Role     `json:"role"`
	KeyID         string   `json:"key_id"`
	Version       uint32   `json:"version"`
	Peer          string   `json:"peer"`
	State         RunState `json:"state"`
	Reason        string   `json:"reason,omitempty"`
	TimedOut      bool     `json:"timed_out,omitempty"`   // ended FAILED by the sweeper
	Attempt       int      `json:"attempt,omitempty"`     // source: 1 for the first run for this replica, 2 for its first retry …
	Epoch         uint64   `json:"epoch,omitempty"`       // source: the key's epoch when the run started
	WasCurrent    bool     `json:"was_current,omitempty"` // source: Version was the current version then
	NewReplica    bool     `json:"new_replica,omitempty"` // destination: the run created the replica
	KeySpec       string   `json:"key_spec"`
	KeyUsage      string   `json:"key_usage"`
	PrimaryRegion string   `json:"primary_region"`
	Description   string   `json:"description,omitempty"`
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
	// msg_id with other bytes is refused as replayed_msg_id (Match).
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

// Public is the run as the API shows it.
func (r *Run) Public() api.Replication {
	return api.Replication{
		ReplicationID: r.ID, Role: string(r.Role), KeyID: r.KeyID, Version: r.Version, Peer: r.Peer,
		State: string(r.State), Reason: r.Reason, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt,
		CompletedAt: r.CompletedAt,
	}
}

// Ended reports whether the run is COMPLETED or FAILED.
func (r *Run) Ended() bool { return r.State == Completed || r.State == Failed }

// Expired reports whether the run is past its expiry at now.
func (r *Run) Expired(now time.Time) bool { return now.After(r.ExpiresAt) }

// Replica is the primary's record of one replica region.
type Replica struct {
	Region        string       `json:"region"`
	State         ReplicaState `json:"state"`
	ReplicationID string       `json:"replication_id,omitempty"` // the latest run that copies a version to it
	Reason        string       `json:"reason,omitempty"`
	SyncedEpoch   uint64       `json:"synced_epoch"`            // the key's epoch the replica confirmed
	StatusSeq     uint64       `json:"status_seq,omitempty"`    // the last status the replica reported
	DeletionDate  *time.Time   `json:"deletion_date,omitempty"` // PENDING_DELETION only
	UpdatedAt     time.Time    `json:"updated_at"`
}

// KeyVersion is one version of a key's material, as the primary records it.
type KeyVersion struct {
	Version      uint32       `json:"version"`
	State        VersionState `json:"state"`
	ReplicatedTo []string     `json:"replicated_to"` // regions that confirmed holding it, the primary's included (sorted)
	CreatedAt    time.Time    `json:"created_at"`
	ActivatedAt  *time.Time   `json:"activated_at,omitempty"`
}

// Key is a key's record in the KEYS bucket: the metadata the API shows
// (Public) and the region's own bookkeeping for the lifecycle messages.
// It is the storage schema, not the API's: its JSON field names are the
// ones records have always been stored with, and an API change does not
// change them.
type Key struct {
	KeyID          string     `json:"key_id"`
	Partition      string     `json:"partition"`
	Region         string     `json:"region"`
	Role           KeyRole    `json:"role"`
	PrimaryRegion  string     `json:"primary_region"`
	KeySpec        string     `json:"key_spec"`
	KeyUsage       string     `json:"key_usage"`
	Description    string     `json:"description,omitempty"`
	Enabled        bool       `json:"enabled"`
	Versions       []uint32   `json:"versions"`
	CurrentVersion uint32     `json:"current_version"`
	Replicas       []Replica  `json:"replicas,omitempty"` // primary only
	CreatedAt      time.Time  `json:"created_at"`
	UpdatedAt      time.Time  `json:"updated_at"`
	ReplicatedFrom string     `json:"replicated_from,omitempty"` // replica only: replication id
	UsableAt       *time.Time `json:"usable_at,omitempty"`       // replica only
	KeyState       KeyState   `json:"key_state"`
	// Epoch counts changes of the key's shared state (version activation,
	// primary change); replicas apply the primary's state only if newer.
	Epoch uint64 `json:"epoch"`
	// VersionDetails has, per version, its state and the regions holding
	// it: the "replicated-to" watermark (primary only).
	VersionDetails []KeyVersion `json:"version_details,omitempty"`
	// PendingPrimary is the region taking over while KeyState is UPDATING.
	PendingPrimary string     `json:"pending_primary,omitempty"`
	DeletionDate   *time.Time `json:"deletion_date,omitempty"` // PENDING_DELETION only
	// SingleRegion: created with multi_region false; never replicated.
	SingleRegion bool `json:"single_region,omitempty"`

	// Primary: a version number a rotation reserved before generating it.
	Reserved   uint32    `json:"reserved,omitempty"`
	ReservedAt time.Time `json:"reserved_at,omitzero"`
	// Primary: the last key.sync sent to each replica (its epoch and when).
	SyncSent map[string]SyncSent `json:"sync_sent,omitempty"`
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
	// VersionDates); a new primary takes them over.
	VersionDates map[uint32]VersionDates `json:"version_dates,omitempty"`
	// Deleted is a replica's tombstone: its versions are destroyed, and the
	// record stays until the primary has acknowledged the deletion.
	Deleted bool `json:"deleted,omitempty"`
	// Policy is the key's policy document in this region, as it was put
	// (docs/AUTHZ.md). Empty for a key stored before policies: it then has
	// the region's admins-only policy.
	Policy string `json:"policy,omitempty"`
	// Primary: the policy replicate-key asked for a replica, by region; it
	// travels in every init to that region.
	ReplicaPolicies map[string]string `json:"replica_policies,omitempty"`
}

// SyncSent records a key.sync sent to a replica.
type SyncSent struct {
	Epoch uint64    `json:"epoch"`
	At    time.Time `json:"at"`
}

// VersionDates is a replica's own record of a version's dates, kept so
// that a hand-over does not lose them: the signed hand-over carries
// versions, not dates. CreatedAt is when the version's material arrived in
// this region (or, in a former primary, when the primary made it);
// ActivatedAt when this region began to encrypt with it.
type VersionDates struct {
	CreatedAt   time.Time  `json:"created_at"`
	ActivatedAt *time.Time `json:"activated_at,omitempty"`
}

// Public is the key as the API shows it (a copy: changing it does not
// change k).
func (k *Key) Public() *api.Key {
	out := &api.Key{
		KeyID: k.KeyID, Partition: k.Partition, Region: k.Region, Role: string(k.Role),
		PrimaryRegion: k.PrimaryRegion, KeySpec: k.KeySpec, KeyUsage: k.KeyUsage,
		Description: k.Description, Enabled: k.Enabled, Versions: slices.Clone(k.Versions),
		CurrentVersion: k.CurrentVersion, CreatedAt: k.CreatedAt, UpdatedAt: k.UpdatedAt,
		ReplicatedFrom: k.ReplicatedFrom, UsableAt: k.UsableAt, KeyState: string(k.KeyState),
		Epoch: k.Epoch, PendingPrimary: k.PendingPrimary, DeletionDate: k.DeletionDate,
		SingleRegion: k.SingleRegion,
	}
	for _, r := range k.Replicas {
		out.Replicas = append(out.Replicas, api.Replica{
			Region: r.Region, State: string(r.State), ReplicationID: r.ReplicationID, Reason: r.Reason,
			SyncedEpoch: r.SyncedEpoch, StatusSeq: r.StatusSeq, DeletionDate: r.DeletionDate, UpdatedAt: r.UpdatedAt,
		})
	}
	for _, d := range k.VersionDetails {
		out.VersionDetails = append(out.VersionDetails, api.KeyVersion{
			Version: d.Version, State: string(d.State), ReplicatedTo: slices.Clone(d.ReplicatedTo),
			CreatedAt: d.CreatedAt, ActivatedAt: d.ActivatedAt,
		})
	}
	return out
}
