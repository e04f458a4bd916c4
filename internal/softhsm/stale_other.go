//go:build !unix

package softhsm

// removeStaleDirs does nothing where process liveness is not checked.
func removeStaleDirs(string) {}
