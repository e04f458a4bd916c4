// Package secretfile reads the files that hold secrets (a NATS password, a
// PKCS#11 PIN, the partition's bundle root key) with one set of checks, the
// way ssh treats a private key: the file must be a regular file owned by
// the process's user or by root, readable and writable by its owner only
// (no group or other permission bits), and no larger than a bound; a
// one-line secret must be exactly one non-empty line. Errors name the file,
// never its content.
package secretfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
)

// MaxLineSize bounds a one-line secret file (a password or a PIN).
const MaxLineSize = 1024

// ErrPermissions is matched (errors.Is) by the error for a file that is
// group- or world-accessible or owned by another user.
var ErrPermissions = errors.New("secret file permissions")

// ReadLine reads a one-line secret: the file's content without one
// trailing "\n" or "\r\n". It refuses an empty file, a second line and a
// file larger than [MaxLineSize], besides what [Read] refuses.
func ReadLine(path string) (string, error) {
	b, err := Read(path, MaxLineSize)
	if err != nil {
		return "", err
	}
	defer clear(b)
	s := bytes.TrimSuffix(bytes.TrimSuffix(b, []byte("\n")), []byte("\r"))
	if len(s) == 0 {
		return "", fmt.Errorf("secret file %s: the file is empty", path)
	}
	if bytes.ContainsAny(s, "\r\n") {
		return "", fmt.Errorf("secret file %s: more than one line", path)
	}
	return string(s), nil
}

// Read reads a secret file of at most maxSize bytes after checking that it
// is a regular file, owned by the process's effective user or root, with
// no permission bits for group or others (0600 or 0400). The caller should
// clear the returned bytes when done.
func Read(path string, maxSize int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("secret file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("secret file: %w", err)
	}
	if err := Check(path, st); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSize+1))
	if err != nil {
		return nil, fmt.Errorf("secret file %s: %w", path, err)
	}
	if int64(len(b)) > maxSize {
		clear(b)
		return nil, fmt.Errorf("secret file %s: longer than %d bytes", path, maxSize)
	}
	return b, nil
}

// Check applies Read's checks of type, owner and mode to st, the file
// information of path (an open file's, so that what is checked is what is
// read).
func Check(path string, st os.FileInfo) error {
	if !st.Mode().IsRegular() {
		return fmt.Errorf("secret file %s: not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("secret file %s: mode %04o is accessible by group or others; make it 0600 (chmod 600): %w", path, perm, ErrPermissions)
	}
	if uid, ok := owner(st); ok && uid != 0 && uid != os.Geteuid() {
		return fmt.Errorf("secret file %s: owned by uid %d, not by this process's user (%d) or root: %w", path, uid, os.Geteuid(), ErrPermissions)
	}
	return nil
}
