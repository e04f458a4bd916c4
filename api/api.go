// Package api defines the request API of a mrkrepl region: the operations,
// their JSON request and response bodies, and the error codes.
//
// Every operation is served by the region's workers as a NATS micro service
// on mrk.<region>.api.<op> (request/reply). A replication can also be
// requested by publishing a [ReplicateKeyRequest] as an event on
// mrk.<region>.requests.replicate-key; its outcome then appears on the
// region's audit stream (mrk.<region>.events.>) and in describe-key.
//
// Byte fields ([]byte) travel as standard base64 strings, as encoding/json
// writes them. The package github.com/mrkrepl/mrkrepl/client wraps this API
// for Go programs.
package api

import "time"

// Operation names (the last token of the API subject).
const (
	OpCreateKey           = "create-key"
	OpDescribeKey         = "describe-key"
	OpListKeys            = "list-keys"
	OpReplicateKey        = "replicate-key"
	OpDescribeReplication = "describe-replication"
	OpEncrypt             = "encrypt"
	OpDecrypt             = "decrypt"
	OpGenerateDataKey     = "generate-data-key"
	OpRotateKey           = "rotate-key"
	OpUpdatePrimaryRegion = "update-primary-region"
	OpScheduleKeyDeletion = "schedule-key-deletion"
	OpCancelKeyDeletion   = "cancel-key-deletion"
	OpGetKeyPolicy        = "get-key-policy"
	OpPutKeyPolicy        = "put-key-policy"
)

// ActorHeader was the request header in which a client named itself. It
// proves nothing and is ignored: the caller is the principal the NATS
// server stamps on the request (docs/AUTHZ.md). Kept so that old clients'
// requests still parse.
const ActorHeader = "Mrkrepl-Actor"

// Error codes, sent in the Nats-Service-Error-Code header of a failed reply.
const (
	CodeBadRequest = "400"
	// CodeUnauthenticated: the request carries no identity the server
	// proved (docs/AUTHZ.md, "Principals").
	CodeUnauthenticated = "401"
	// CodeForbidden: the key's policy (or the region's, for create-key and
	// list-keys) does not allow the caller the action.
	CodeForbidden = "403"
	CodeNotFound  = "404"
	CodeConflict  = "409"
	CodeInternal  = "500"
)

// Key specs and usages.
const (
	KeySpecSymmetricDefault = "SYMMETRIC_DEFAULT"
	KeyUsageEncryptDecrypt  = "ENCRYPT_DECRYPT"
)

// Key roles and replica states.
const (
	RolePrimary = "PRIMARY"
	RoleReplica = "REPLICA"

	ReplicaCreating        = "CREATING"         // the first copy is on its way
	ReplicaEnabled         = "ENABLED"          // holds every version up to the current one
	ReplicaUpdating        = "UPDATING"         // taking part in a change of primary region
	ReplicaPendingDeletion = "PENDING_DELETION" // deletion scheduled in the replica's region
	ReplicaFailed          = "FAILED"           // the last run for it gave up (see Reason)
)

// Key states (Key.KeyState): a key in its own region.
const (
	KeyStateEnabled         = "ENABLED"
	KeyStateUpdating        = "UPDATING" // its primary region is changing
	KeyStatePendingDeletion = "PENDING_DELETION"
)

// Version states (KeyVersion.State).
const (
	VersionStaged   = "STAGED"   // being copied to every replica; not yet used to encrypt
	VersionCurrent  = "CURRENT"  // used to encrypt
	VersionPrevious = "PREVIOUS" // decrypts what it encrypted
)

// Replication states, per role. A source run goes INIT_SENT → MATERIAL_SENT
// → COMPLETED (or FAILED); a destination run goes OFFER_SENT → COMPLETED
// (or FAILED).
const (
	StateInitSent     = "INIT_SENT"
	StateOfferSent    = "OFFER_SENT"
	StateMaterialSent = "MATERIAL_SENT"
	StateCompleted    = "COMPLETED"
	StateFailed       = "FAILED"
)

// CreateKeyRequest asks for a new multi-Region primary key in this region.
type CreateKeyRequest struct {
	Description string `json:"description,omitempty"`
	KeyUsage    string `json:"key_usage,omitempty"` // default ENCRYPT_DECRYPT
	// Policy is the key's policy in this region (docs/AUTHZ.md); empty
	// gives the default policy: the region's admins and the creator.
	Policy string `json:"policy,omitempty"`
	// BypassPolicyLockoutSafetyCheck allows a Policy that does not let the
	// creator put the key's policy again.
	BypassPolicyLockoutSafetyCheck bool `json:"bypass_policy_lockout_safety_check,omitempty"`
	// MultiRegion false makes a single-Region key, which replicate-key
	// refuses (as AWS KMS does); nil or true a multi-Region primary key.
	MultiRegion *bool `json:"multi_region,omitempty"`
}

// KeyRequest names a key.
type KeyRequest struct {
	KeyID string `json:"key_id"`
}

// Replica is the primary's view of one replica region.
type Replica struct {
	Region        string     `json:"region"`
	State         string     `json:"state"`
	ReplicationID string     `json:"replication_id,omitempty"` // the latest run that copies a version to it
	Reason        string     `json:"reason,omitempty"`
	SyncedEpoch   uint64     `json:"synced_epoch"`            // the key's epoch the replica confirmed
	StatusSeq     uint64     `json:"status_seq,omitempty"`    // the last status the replica reported
	DeletionDate  *time.Time `json:"deletion_date,omitempty"` // PENDING_DELETION only
	UpdatedAt     time.Time  `json:"updated_at"`
}

// KeyVersion is one version of a key's material, as the primary sees it.
type KeyVersion struct {
	Version      uint32     `json:"version"`
	State        string     `json:"state"`         // VersionStaged, VersionCurrent or VersionPrevious
	ReplicatedTo []string   `json:"replicated_to"` // regions that confirmed holding it, the primary's included (sorted)
	CreatedAt    time.Time  `json:"created_at"`
	ActivatedAt  *time.Time `json:"activated_at,omitempty"`
}

// Key is a key's metadata in one region.
type Key struct {
	KeyID          string     `json:"key_id"`
	Partition      string     `json:"partition"`
	Region         string     `json:"region"`
	Role           string     `json:"role"`
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

	// KeyState is ENABLED, UPDATING or PENDING_DELETION (KeyState*).
	KeyState string `json:"key_state"`
	// Epoch counts changes of the key's shared state (version activation,
	// primary change); replicas apply the primary's state only if newer.
	Epoch uint64 `json:"epoch"`
	// VersionDetails has, per version, its state and the regions holding
	// it: the "replicated-to" watermark (primary only).
	VersionDetails []KeyVersion `json:"version_details,omitempty"`
	// PendingPrimary is the region taking over while KeyState is UPDATING.
	PendingPrimary string     `json:"pending_primary,omitempty"`
	DeletionDate   *time.Time `json:"deletion_date,omitempty"` // PENDING_DELETION only
	// MaterialMissing lists the versions of Versions whose material this
	// region's HSM does not hold (describe-key only): the key's record
	// outlived its HSM's state, say a soft HSM kept in memory, or a token
	// replaced. Encrypt and decrypt with such a version are refused
	// (CodeConflict); see docs/API.md.
	MaterialMissing []uint32 `json:"material_missing,omitempty"`
	// SingleRegion: created with multi_region false; never replicated.
	SingleRegion bool `json:"single_region,omitempty"`
}

// ListKeysResponse lists key ids known in the region.
type ListKeysResponse struct {
	KeyIDs []string `json:"key_ids"`
}

// ReplicateKeyRequest asks the key's primary region to copy it to
// ReplicaRegion. ClientToken (optional, 1 to 64 printable ASCII characters)
// makes the request idempotent for 24 hours: repeating it returns the same
// replication run, whatever became of it, and never starts a second one;
// the same token with another key or region is refused (409).
type ReplicateKeyRequest struct {
	KeyID         string `json:"key_id"`
	ReplicaRegion string `json:"replica_region"`
	ClientToken   string `json:"client_token,omitempty"`
	// Policy is the replica's key policy in ReplicaRegion (docs/AUTHZ.md);
	// empty sends the key's policy in this region. It travels signed in
	// replication.init; from then on each region's policy is its own.
	Policy string `json:"policy,omitempty"`
}

// Replication is one replication run as a region sees it.
type Replication struct {
	ReplicationID string     `json:"replication_id"`
	Role          string     `json:"role"` // "source" or "destination"
	KeyID         string     `json:"key_id"`
	Version       uint32     `json:"version"`
	Peer          string     `json:"peer"`
	State         string     `json:"state"`
	Reason        string     `json:"reason,omitempty"`
	CreatedAt     time.Time  `json:"created_at"`
	UpdatedAt     time.Time  `json:"updated_at"`
	CompletedAt   *time.Time `json:"completed_at,omitempty"`
}

// ReplicationRequest names a replication run.
type ReplicationRequest struct {
	ReplicationID string `json:"replication_id"`
}

// EncryptRequest encrypts with the key's current version.
//
// EncryptionContext is bound to the ciphertext (canonically encoded into
// its AAD): decrypt must give the same map. It is not secret: key policies
// test it and audit events record it. AAD is the older raw form (opaque
// bytes, which no policy can test); give one or the other, not both.
type EncryptRequest struct {
	KeyID             string            `json:"key_id"`
	Plaintext         []byte            `json:"plaintext"`
	EncryptionContext map[string]string `json:"encryption_context,omitempty"`
	AAD               []byte            `json:"aad,omitempty"`
}

// EncryptResponse carries a self-describing ciphertext (it names the key
// and version, see docs/PROTOCOL.md).
type EncryptResponse struct {
	KeyID          string `json:"key_id"`
	Version        uint32 `json:"version"`
	CiphertextBlob []byte `json:"ciphertext_blob"`
}

// DecryptRequest decrypts a ciphertext made in any region of the partition.
//
// KeyID, if set, must name the key the ciphertext was made with (else 400):
// a caller pins the key it expects, as AWS KMS's KeyId does.
type DecryptRequest struct {
	CiphertextBlob    []byte            `json:"ciphertext_blob"`
	KeyID             string            `json:"key_id,omitempty"`
	EncryptionContext map[string]string `json:"encryption_context,omitempty"`
	AAD               []byte            `json:"aad,omitempty"`
}

// DecryptResponse returns the plaintext and the key that opened it.
type DecryptResponse struct {
	KeyID     string `json:"key_id"`
	Version   uint32 `json:"version"`
	Plaintext []byte `json:"plaintext"`
}

// MaxPlaintext bounds encrypt input (as AWS KMS does).
const MaxPlaintext = 4096

// GenerateDataKeyRequest asks for a fresh data key of NumberOfBytes (16,
// 24 or 32; default 32) returned in plaintext and encrypted under the key's
// current version, with AAD as the encryption context.
type GenerateDataKeyRequest struct {
	KeyID             string            `json:"key_id"`
	NumberOfBytes     int               `json:"number_of_bytes,omitempty"`
	EncryptionContext map[string]string `json:"encryption_context,omitempty"`
	AAD               []byte            `json:"aad,omitempty"`
}

// GenerateDataKeyResponse holds the data key twice: in plaintext, for the
// caller to use and forget, and as a ciphertext blob to store beside the
// data (decrypt it in any region holding the key).
type GenerateDataKeyResponse struct {
	KeyID          string `json:"key_id"`
	Version        uint32 `json:"version"`
	Plaintext      []byte `json:"plaintext"`
	CiphertextBlob []byte `json:"ciphertext_blob"`
}

// RotateKeyRequest asks the key's primary region for a new version of its
// material. The version is STAGED until every replica confirmed it, then
// CURRENT everywhere.
type RotateKeyRequest struct {
	KeyID string `json:"key_id"`
}

// UpdatePrimaryRegionRequest asks the key's primary region to hand the key
// over to PrimaryRegion, which must hold an ENABLED replica.
type UpdatePrimaryRegionRequest struct {
	KeyID         string `json:"key_id"`
	PrimaryRegion string `json:"primary_region"`
}

// ScheduleKeyDeletionRequest schedules the deletion of the key in the
// region asked. PendingWindowDays (1 to 30) overrides the region's default
// waiting period (7 days unless configured). A primary key cannot be
// scheduled for deletion while it has replicas.
type ScheduleKeyDeletionRequest struct {
	KeyID             string `json:"key_id"`
	PendingWindowDays int    `json:"pending_window_days,omitempty"`
}

// KeyPolicyRequest names a key whose policy is asked for.
type KeyPolicyRequest struct {
	KeyID string `json:"key_id"`
}

// KeyPolicy is a key's policy document in one region, as it was put.
type KeyPolicy struct {
	KeyID  string `json:"key_id"`
	Policy string `json:"policy"`
}

// PutKeyPolicyRequest replaces a key's policy in the region asked (each
// region's policy is its own). The caller must still be allowed
// kms:PutKeyPolicy by the new policy unless BypassPolicyLockoutSafetyCheck.
type PutKeyPolicyRequest struct {
	KeyID                          string `json:"key_id"`
	Policy                         string `json:"policy"`
	BypassPolicyLockoutSafetyCheck bool   `json:"bypass_policy_lockout_safety_check,omitempty"`
}

// Event is an audit event published on mrk.<region>.events.<type>.
type Event struct {
	Type   string    `json:"type"`
	Time   time.Time `json:"time"`
	Region string    `json:"region"`
	// Actor is who caused the event: for a request, the principal the
	// NATS server proved ("ACCOUNT/user"; "ACCOUNT" for a request event,
	// which carries only its account); "region:<name>" for a change another
	// region asked for in a signed message; "worker" for the worker's own
	// timers (sweeps, deletion).
	Actor string `json:"actor,omitempty"`
	// Action is the policy action a request asked for (kms:Decrypt …).
	Action string `json:"action,omitempty"`
	// EncryptionContext is the request's encryption context (not secret).
	EncryptionContext map[string]string `json:"encryption_context,omitempty"`
	KeyID             string            `json:"key_id,omitempty"`
	ReplicationID     string            `json:"replication_id,omitempty"`
	Peer              string            `json:"peer,omitempty"`
	Version           uint32            `json:"version,omitempty"`
	Regions           []string          `json:"regions,omitempty"` // the regions concerned, where more than one
	Reason            string            `json:"reason,omitempty"`
}

// Event types.
const (
	EventKeyCreated           = "KeyCreated"
	EventReplicationStarted   = "ReplicationStarted"
	EventReplicaCreated       = "ReplicaCreated"
	EventVersionReplicated    = "VersionReplicated"
	EventReplicationCompleted = "ReplicationCompleted"
	EventReplicationFailed    = "ReplicationFailed"
	EventRequestRejected      = "RequestRejected"
	EventMessageRefused       = "MessageRefused"
	// EventAccessDenied: a request its principal may not make (403).
	EventAccessDenied = "AccessDenied"
	// EventKeyPolicyChanged: put-key-policy replaced a key's policy.
	EventKeyPolicyChanged = "KeyPolicyChanged"
	// Data-plane uses of a key (Config.AuditDataPlane), with the
	// encryption context.
	EventEncrypt         = "Encrypt"
	EventDecrypt         = "Decrypt"
	EventGenerateDataKey = "GenerateDataKey"

	EventVersionStaged            = "VersionStaged"
	EventVersionActivated         = "VersionActivated"
	EventPrimaryUpdateStarted     = "PrimaryUpdateStarted"
	EventPrimaryUpdated           = "PrimaryUpdated"
	EventPrimaryUpdateCancelled   = "PrimaryUpdateCancelled"
	EventReplicaDeletionScheduled = "ReplicaDeletionScheduled"
	EventReplicaDeletionCancelled = "ReplicaDeletionCancelled"
	EventReplicaDeleted           = "ReplicaDeleted"
	EventKeyDeletionScheduled     = "KeyDeletionScheduled"
	EventKeyDeletionCancelled     = "KeyDeletionCancelled"
	EventKeyDeleted               = "KeyDeleted"
)
