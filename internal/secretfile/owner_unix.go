//go:build unix

package secretfile

import (
	"os"
	"syscall"
)

// owner returns the uid owning the file, if the platform says.
func owner(st os.FileInfo) (int, bool) {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return int(s.Uid), true
	}
	return 0, false
}
