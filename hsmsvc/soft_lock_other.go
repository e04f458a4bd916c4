//go:build !unix

package hsmsvc

import "os"

// lockDir opens the lock file without locking it: on this platform nothing
// stops two HSMs from sharing a store directory.
func lockDir(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
}
