// Package messages implements the wire format of mrkrepl/1, the replication
// protocol for multi-Region keys described in docs/PROTOCOL.md.
//
// Every protocol message is a COSE_Sign1 envelope (RFC 9052) signed with
// ES384 by the sending region's Replication Signing Key (RSK). The protected
// header carries exactly the algorithm and the key id (kid, the SHA-256 of the
// RSK's SubjectPublicKeyInfo DER); the unprotected header is empty; the
// payload is a CBOR map in RFC 8949 core deterministic encoding.
//
// Parsing is strict: an envelope or payload that is not byte-for-byte the
// encoding this package would produce (unknown fields, trailing bytes,
// indefinite lengths, non-minimal integers, unsorted keys, tags, a high-S
// ECDSA signature) is rejected. There is exactly one accepted encoding of any
// message, so the SHA-384 digest of the bytes identifies it and the four
// messages of a replication form a chain no relay can splice.
//
// Use [Seal] to build a signed message and [Verify] to accept one: Verify
// applies every stateless check of the protocol (signature, kid bound to the
// src region in the [Bundle] and valid at sent_at, partition, addressing,
// expiry, subject) and returns a [*VerifyError] with a machine-readable
// [Reason]. Checks that need state (replay cache, the replication's current
// step) belong to the receiver.
//
// The package does no I/O and is safe for concurrent use.
package messages
