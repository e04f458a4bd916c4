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
)

// Error codes, sent in the Nats-Service-Error-Code header of a failed reply.
const (
	CodeBadRequest = "400"
	CodeNotFound   = "404"
	CodeConflict   = "409"
	CodeInternal   = "500"
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

	ReplicaCreating = "CREATING"
	ReplicaEnabled  = "ENABLED"
	ReplicaFailed   = "FAILED"
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
}

// KeyRequest names a key.
type KeyRequest struct {
	KeyID string `json:"key_id"`
}

// Replica is the primary's view of one replica region.
type Replica struct {
	Region        string    `json:"region"`
	State         string    `json:"state"`
	ReplicationID string    `json:"replication_id,omitempty"`
	Reason        string    `json:"reason,omitempty"`
	UpdatedAt     time.Time `json:"updated_at"`
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

// EncryptRequest encrypts with the key's current version. AAD is the
// encryption context: the same bytes must be given to decrypt.
type EncryptRequest struct {
	KeyID     string `json:"key_id"`
	Plaintext []byte `json:"plaintext"`
	AAD       []byte `json:"aad,omitempty"`
}

// EncryptResponse carries a self-describing ciphertext (it names the key
// and version, see docs/PROTOCOL.md).
type EncryptResponse struct {
	KeyID          string `json:"key_id"`
	Version        uint32 `json:"version"`
	CiphertextBlob []byte `json:"ciphertext_blob"`
}

// DecryptRequest decrypts a ciphertext made in any region of the partition.
type DecryptRequest struct {
	CiphertextBlob []byte `json:"ciphertext_blob"`
	AAD            []byte `json:"aad,omitempty"`
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
	KeyID         string `json:"key_id"`
	NumberOfBytes int    `json:"number_of_bytes,omitempty"`
	AAD           []byte `json:"aad,omitempty"`
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

// Event is an audit event published on mrk.<region>.events.<type>.
type Event struct {
	Type          string    `json:"type"`
	Time          time.Time `json:"time"`
	Region        string    `json:"region"`
	KeyID         string    `json:"key_id,omitempty"`
	ReplicationID string    `json:"replication_id,omitempty"`
	Peer          string    `json:"peer,omitempty"`
	Reason        string    `json:"reason,omitempty"`
}

// Event types.
const (
	EventKeyCreated           = "KeyCreated"
	EventReplicationStarted   = "ReplicationStarted"
	EventReplicaCreated       = "ReplicaCreated"
	EventReplicationCompleted = "ReplicationCompleted"
	EventReplicationFailed    = "ReplicationFailed"
	EventRequestRejected      = "RequestRejected"
	EventMessageRefused       = "MessageRefused"
)
