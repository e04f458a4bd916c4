//go:build !cgo

package softhsm

import "fmt"

// keeperLabel names the token that holds the module open for the process.
const keeperLabel = "mrkrepl-keeper"

// CreateToken needs cgo to load the SoftHSM2 module; this build has none.
func CreateToken(dir, label string) (uri string, err error) {
	return "", fmt.Errorf("softhsm: create token %q: %w: mrkrepl was built without cgo (CGO_ENABLED=0), which PKCS#11 needs", label, ErrNotInstalled)
}

// OpenToken needs cgo to load the SoftHSM2 module; this build has none.
func OpenToken(dir, label string) (uri string, err error) {
	return "", fmt.Errorf("softhsm: open token %q: %w: mrkrepl was built without cgo (CGO_ENABLED=0), which PKCS#11 needs", label, ErrNotInstalled)
}
