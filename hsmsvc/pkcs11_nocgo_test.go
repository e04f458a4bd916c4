//go:build !cgo

package hsmsvc

import (
	"errors"
	"strings"
	"testing"
)

func TestPKCS11WithoutCgo(t *testing.T) {
	uri := "pkcs11:token=a?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/p"
	if _, err := Open(t.Context(), uri, Options{}); !errors.Is(err, errNoCgo) {
		t.Errorf("Open: %v, want the no-cgo error", err)
	}
	if _, err := InitPKCS11RSK(t.Context(), uri, Options{}); !errors.Is(err, errNoCgo) {
		t.Errorf("InitPKCS11RSK: %v, want the no-cgo error", err)
	}
	// Syntax errors are still precise.
	if _, err := Open(t.Context(), "pkcs11:token=a", Options{}); err == nil || !strings.Contains(err.Error(), "module-path") {
		t.Errorf("Open of a bad uri: %v", err)
	}
}
