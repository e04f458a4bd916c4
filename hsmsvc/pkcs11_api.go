package hsmsvc

import "context"

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
