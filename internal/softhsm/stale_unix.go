//go:build unix

package softhsm

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// removeStaleDirs removes the test token directories of processes that no
// longer exist.
func removeStaleDirs(tmp string) {
	matches, _ := filepath.Glob(filepath.Join(tmp, "mrkrepl-softhsm-*"))
	for _, m := range matches {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(m), "mrkrepl-softhsm-"))
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); err == syscall.ESRCH {
			_ = os.RemoveAll(m)
		}
	}
}
