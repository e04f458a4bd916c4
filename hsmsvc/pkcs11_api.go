package hsmsvc

import (
	"context"
	"crypto"
)

// Optional capabilities. Backends implement them where they apply; callers
// find them with a type assertion on an HSM.

// HostKDFReporter is implemented by the pkcs11 backend, whose token may be
// unable to run the protocol's KDF inside (SoftHSM2). Export HostKDF as a
// gauge and HostKDFOps as a counter: they make visible that the ECDH shared
// secret Z leaves the token.
type HostKDFReporter interface {
	// HostKDF reports whether this HSM runs the KDF on the host: Z is read
	// out of the token, the RWK computed in process memory and put back as
	// a session object. Fixed at Open.
	HostKDF() bool
	// HostKDFOps counts the KDF runs done on the host since Open (one per
	// WrapForPeer and per UnwrapFromPeer that got as far as the ECDH).
	HostKDFOps() uint64
}

// AgreementKeySweeper is implemented by HSMs that keep RAKBs where they do
// not expire by themselves (the pkcs11 backend keeps them as token
// objects). Call SweepExpired now and then, for instance every minute.
type AgreementKeySweeper interface {
	// SweepExpired destroys every RAKB whose expiry has passed and returns
	// how many it destroyed.
	SweepExpired(ctx context.Context) (int, error)
}

// RSKRotator is implemented by HSMs that can hold more than one RSK, so that
// a region can rotate its RSK while its workers run (docs/OPERATIONS.md, "RSK
// rotation"): CreateRSK makes the new key, the trust bundle lists it, and a
// worker given that bundle signs with the newest RSK that its HSM holds and
// the bundle lists as valid. Both backends implement it.
//
// Signer keeps its meaning: the default RSK, the one the HSM was set up with
// (soft: made at the first open; pkcs11: made by InitPKCS11RSK). The RSKs
// CreateRSK makes are kept beside it, for the HSM's life (a persisted soft
// store or a token: across restarts), and never replace it.
type RSKRotator interface {
	// CreateRSK generates a new RSK (ECDSA P-384) inside the HSM and returns
	// its signer, self-tested (it has made a signature that verifies).
	CreateRSK(ctx context.Context) (crypto.Signer, error)
	// RSKs returns every RSK the HSM holds: the default one (the signer
	// Signer returns) first, then the others sorted by kid. A backend that
	// other processes can write to (a PKCS#11 token) looks again at each
	// call, so it also returns RSKs that another process created.
	RSKs(ctx context.Context) ([]crypto.Signer, error)
}
