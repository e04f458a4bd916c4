//go:build !cgo

package hsmsvc

import (
	"context"
	"crypto"
	"errors"
	"fmt"
)

// errNoCgo explains why this build has no pkcs11 backend.
var errNoCgo = errors.New("the pkcs11 backend needs cgo to load a PKCS#11 module, and this binary was built with CGO_ENABLED=0; rebuild with cgo, or use a soft: URI")

// openPKCS11 refuses every pkcs11: URI in a build without cgo, after
// checking its syntax so that typos are still reported precisely.
func openPKCS11(ctx context.Context, uri string, opts Options) (HSM, error) {
	if _, err := parsePKCS11URI(uri); err != nil {
		return nil, fmt.Errorf("open pkcs11 hsm: %w", err)
	}
	return nil, fmt.Errorf("open pkcs11 hsm: %w", errNoCgo)
}

// InitPKCS11RSK creates the region's RSK in a PKCS#11 token; without cgo it
// always fails (see the cgo build's documentation).
func InitPKCS11RSK(ctx context.Context, uri string, opts Options) (crypto.PublicKey, error) {
	if _, err := parsePKCS11URI(uri); err != nil {
		return nil, fmt.Errorf("init pkcs11 rsk: %w", err)
	}
	return nil, fmt.Errorf("init pkcs11 rsk: %w", errNoCgo)
}
