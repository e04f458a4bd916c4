package messages

import (
	"crypto/ecdh"
	"fmt"
	"time"
	"unicode/utf8"
)

// Limits and fixed values checked by [Message.Validate].
const (
	// MaxLifetime bounds expires_at − sent_at. The kid is checked against
	// its validity window at sent_at, which the signer chooses; the bound
	// keeps a retired RSK from signing messages that stay acceptable for
	// long after its not_after.
	MaxLifetime = 24 * time.Hour
	// MaxDescriptionSize bounds properties.description, in bytes (the KMS
	// limit for a key description).
	MaxDescriptionSize = 8192
	// MaxPolicySize bounds init.policy, in bytes: with every other field at
	// its largest, an init stays well within MaxMessageSize (a key policy
	// put through the API may be longer, up to 32 KiB as in AWS KMS, but
	// then cannot travel with a replication).
	MaxPolicySize = 8192
	// MaxWrappedKeySize bounds material.wrapped_key for key specs other than
	// SYMMETRIC_DEFAULT: KWP of a 1024-byte key.
	MaxWrappedKeySize = 1024 + 8
	// KeySpecSymmetricDefault is AES-256; its wrapped form (KWP of 32 bytes)
	// is exactly 40 bytes.
	KeySpecSymmetricDefault = "SYMMETRIC_DEFAULT"
	wrappedAES256Size       = 40
	maxTokenSize            = 64
)

// Types returns the message types of mrkrepl/1: the replication's four in
// protocol order, then the lifecycle messages.
func Types() []Type {
	return []Type{TypeInit, TypeOffer, TypeMaterial, TypeReceipt, TypeSync, TypeStatus, TypeHandover, TypeAccept}
}

// MaxVersions bounds the versions listed in a lifecycle message (so a key
// has at most this many versions). With MaxReplicas region names and a
// description of MaxDescriptionSize, the largest hand-over stays within
// MaxMessageSize.
const MaxVersions = 256

// MaxReplicas bounds the regions listed in a hand-over.
const MaxReplicas = 64

// Validate checks everything about m that does not need a trust bundle or a
// clock: version, type, exactly one body and the one named by the type, and
// the shape of every field (see docs/PROTOCOL.md, "Payload"). It returns a
// [*VerifyError] with ReasonBadVersion or ReasonMalformed. [Parse] applies
// the same checks to every payload it decodes, and [Seal] to every message
// it signs.
func (m *Message) Validate() error {
	if ve := checkMessage(m); ve != nil {
		return ve
	}
	return nil
}

func malformed(format string, args ...any) *VerifyError {
	return refuse(ReasonMalformed, fmt.Sprintf(format, args...))
}

func checkMessage(m *Message) *VerifyError {
	if m == nil {
		return malformed("no message")
	}
	if m.V != Version {
		return refuse(ReasonBadVersion, fmt.Sprintf("v is %d, want %d", m.V, Version))
	}
	if ve := checkBodies(m); ve != nil {
		return ve
	}
	h := &m.Header
	switch {
	case !IsID(h.MsgID):
		return malformed("msg_id: want 32 lowercase hex digits")
	case !IsID(h.ReplicationID):
		return malformed("replication_id: want 32 lowercase hex digits")
	case !IsName(h.Partition):
		return malformed("partition: bad name")
	case !IsName(h.Src):
		return malformed("src: bad region name")
	case !IsName(h.Dst):
		return malformed("dst: bad region name")
	case h.SentAt <= 0:
		return malformed("sent_at: not positive")
	case h.ExpiresAt <= h.SentAt:
		return malformed("expires_at: not after sent_at")
	case h.ExpiresAt-h.SentAt > MaxLifetime.Milliseconds():
		return malformed("expires_at: more than %v after sent_at", MaxLifetime)
	}
	switch m.Type {
	case TypeInit:
		return checkInit(m.Init)
	case TypeOffer:
		return checkOffer(m.Offer)
	case TypeMaterial:
		return checkMaterial(m.Material)
	case TypeReceipt:
		return checkReceipt(m.Receipt)
	case TypeSync:
		return checkSync(m.Sync)
	case TypeStatus:
		return checkStatus(m.Status)
	case TypeHandover:
		return checkHandover(m.Handover)
	default: // TypeAccept, checked by checkBodies
		return checkAccept(m.Accept)
	}
}

// checkBodies checks that m.Type is known and that the body it names is the
// only one present.
func checkBodies(m *Message) *VerifyError {
	n := 0
	for _, present := range []bool{m.Init != nil, m.Offer != nil, m.Material != nil, m.Receipt != nil,
		m.Sync != nil, m.Status != nil, m.Handover != nil, m.Accept != nil} {
		if present {
			n++
		}
	}
	if n != 1 {
		return malformed("%d bodies, want exactly 1", n)
	}
	var ok bool
	switch m.Type {
	case TypeInit:
		ok = m.Init != nil
	case TypeOffer:
		ok = m.Offer != nil
	case TypeMaterial:
		ok = m.Material != nil
	case TypeReceipt:
		ok = m.Receipt != nil
	case TypeSync:
		ok = m.Sync != nil
	case TypeStatus:
		ok = m.Status != nil
	case TypeHandover:
		ok = m.Handover != nil
	case TypeAccept:
		ok = m.Accept != nil
	default:
		return malformed("type: unknown")
	}
	if !ok {
		return malformed("body does not match type %s", m.Type)
	}
	return nil
}

func checkInit(b *Init) *VerifyError {
	switch {
	case !IsKeyID(b.KeyID):
		return malformed("init.key_id: want mrk- and 32 lowercase hex digits")
	case !isToken(b.KeySpec):
		return malformed("init.key_spec: bad token")
	case !isToken(b.KeyUsage):
		return malformed("init.key_usage: bad token")
	case b.Version < 1:
		return malformed("init.version: want ≥ 1")
	case !IsName(b.PrimaryRegion):
		return malformed("init.primary_region: bad region name")
	case len(b.Policy) > MaxPolicySize:
		return malformed("init.policy: more than %d bytes", MaxPolicySize)
	case !utf8.ValidString(b.Policy):
		return malformed("init.policy: not UTF-8")
	}
	return nil
}

func checkOffer(b *Offer) *VerifyError {
	if len(b.InitDigest) != DigestSize {
		return malformed("offer.init_digest: want %d bytes", DigestSize)
	}
	if ve := checkRAK("offer.rakb", b.RAKB); ve != nil {
		return ve
	}
	return nil
}

func checkMaterial(b *Material) *VerifyError {
	if len(b.OfferDigest) != DigestSize {
		return malformed("material.offer_digest: want %d bytes", DigestSize)
	}
	if ve := checkRAK("material.raka", b.RAKA); ve != nil {
		return ve
	}
	p := &b.Properties
	switch {
	case !isToken(p.KeySpec):
		return malformed("material.properties.key_spec: bad token")
	case !isToken(p.KeyUsage):
		return malformed("material.properties.key_usage: bad token")
	case len(p.Description) > MaxDescriptionSize:
		return malformed("material.properties.description: more than %d bytes", MaxDescriptionSize)
	}
	n := len(b.WrappedKey)
	if p.KeySpec == KeySpecSymmetricDefault {
		if n != wrappedAES256Size {
			return malformed("material.wrapped_key: want %d bytes for %s", wrappedAES256Size, KeySpecSymmetricDefault)
		}
	} else if n < 16 || n > MaxWrappedKeySize || n%8 != 0 {
		return malformed("material.wrapped_key: bad length %d", n)
	}
	return nil
}

func checkReceipt(b *Receipt) *VerifyError {
	if len(b.MaterialDigest) != DigestSize {
		return malformed("receipt.material_digest: want %d bytes", DigestSize)
	}
	switch b.Status {
	case StatusOK:
		if len(b.KeyConfirmation) != KeyConfirmationSize {
			return malformed("receipt.key_confirmation: want %d bytes with status ok", KeyConfirmationSize)
		}
	case StatusUnwrapFailed, StatusKeyExists, StatusInternalError:
		if len(b.KeyConfirmation) != 0 {
			return malformed("receipt.key_confirmation: want none with status %s", b.Status)
		}
	default:
		return malformed("receipt.status: unknown")
	}
	return nil
}

// checkRAK checks that p is an uncompressed SEC1 point on P-384. crypto/ecdh
// refuses the point at infinity, compressed points and points off the
// curve; the HSM validates the point again before it uses it.
func checkRAK(field string, p []byte) *VerifyError {
	if len(p) != RAKSize || p[0] != 0x04 {
		return malformed("%s: want a %d-byte uncompressed point", field, RAKSize)
	}
	if _, err := ecdh.P384().NewPublicKey(p); err != nil {
		return malformed("%s: not a point on P-384", field)
	}
	return nil
}

// isToken reports whether s is a key spec or usage token: 1 to 64
// characters, each an uppercase ASCII letter, a digit or '_'.
func isToken(s string) bool {
	if len(s) == 0 || len(s) > maxTokenSize {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// checkVersions checks a version list: 1 to MaxVersions versions, each ≥ 1,
// strictly ascending (so no duplicates).
func checkVersions(field string, vs []uint32, allowEmpty bool) *VerifyError {
	if len(vs) == 0 && !allowEmpty || len(vs) > MaxVersions {
		return malformed("%s: want 1 to %d versions", field, MaxVersions)
	}
	for i, v := range vs {
		if v < 1 || i > 0 && v <= vs[i-1] {
			return malformed("%s: want versions ≥ 1 in ascending order", field)
		}
	}
	return nil
}

func checkSync(b *Sync) *VerifyError {
	switch {
	case !IsKeyID(b.KeyID):
		return malformed("sync.key_id: want mrk- and 32 lowercase hex digits")
	case b.Epoch < 1:
		return malformed("sync.epoch: want ≥ 1")
	case !IsName(b.PrimaryRegion):
		return malformed("sync.primary_region: bad region name")
	case len(b.Description) > MaxDescriptionSize:
		return malformed("sync.description: more than %d bytes", MaxDescriptionSize)
	}
	if ve := checkVersions("sync.versions", b.Versions, false); ve != nil {
		return ve
	}
	for _, v := range b.Versions {
		if v == b.CurrentVersion {
			return nil
		}
	}
	return malformed("sync.current_version: not among versions")
}

func checkStatus(b *Status) *VerifyError {
	switch {
	case !IsKeyID(b.KeyID):
		return malformed("status.key_id: want mrk- and 32 lowercase hex digits")
	case !IsName(b.PrimaryRegion):
		return malformed("status.primary_region: bad region name")
	case b.DeletionDate < 0:
		return malformed("status.deletion_date: negative")
	case len(b.SyncDigest) != 0 && len(b.SyncDigest) != DigestSize:
		return malformed("status.sync_digest: want none or %d bytes", DigestSize)
	}
	switch b.State {
	case ReplicaStateEnabled:
		if b.DeletionDate != 0 {
			return malformed("status.deletion_date: want 0 with state %s", b.State)
		}
		return checkVersions("status.versions", b.Versions, false)
	case ReplicaStatePendingDeletion:
		if b.DeletionDate == 0 {
			return malformed("status.deletion_date: want a date with state %s", b.State)
		}
		return checkVersions("status.versions", b.Versions, false)
	case ReplicaStateDeleted:
		if b.DeletionDate != 0 || len(b.Versions) != 0 {
			return malformed("status: want no versions and no deletion date with state %s", b.State)
		}
		return nil
	}
	return malformed("status.state: unknown")
}

func checkHandover(b *Handover) *VerifyError {
	switch {
	case !IsKeyID(b.KeyID):
		return malformed("handover.key_id: want mrk- and 32 lowercase hex digits")
	case b.Epoch < 1:
		return malformed("handover.epoch: want ≥ 1")
	case len(b.Description) > MaxDescriptionSize:
		return malformed("handover.description: more than %d bytes", MaxDescriptionSize)
	case len(b.Replicas) == 0 || len(b.Replicas) > MaxReplicas:
		return malformed("handover.replicas: want 1 to %d regions", MaxReplicas)
	}
	for i, r := range b.Replicas {
		if !IsName(r) || i > 0 && r <= b.Replicas[i-1] {
			return malformed("handover.replicas: want region names in ascending order")
		}
	}
	if ve := checkVersions("handover.versions", b.Versions, false); ve != nil {
		return ve
	}
	for _, v := range b.Versions {
		if v == b.CurrentVersion {
			return nil
		}
	}
	return malformed("handover.current_version: not among versions")
}

func checkAccept(b *Accept) *VerifyError {
	switch {
	case len(b.HandoverDigest) != DigestSize:
		return malformed("accept.handover_digest: want %d bytes", DigestSize)
	case !IsKeyID(b.KeyID):
		return malformed("accept.key_id: want mrk- and 32 lowercase hex digits")
	case b.Epoch < 1:
		return malformed("accept.epoch: want ≥ 1")
	}
	return nil
}
