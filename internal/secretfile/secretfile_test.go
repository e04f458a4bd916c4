package secretfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadLine(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct{ name, content, want string }{
		{"plain", "s3cret", "s3cret"},
		{"newline", "s3cret\n", "s3cret"},
		{"crlf", "s3cret\r\n", "s3cret"},
	} {
		if got, err := ReadLine(write(tc.name, tc.content, 0o600)); err != nil || got != tc.want {
			t.Errorf("%s: %q, %v", tc.name, got, err)
		}
	}
	if got, err := ReadLine(write("ro", "s3cret\n", 0o400)); err != nil || got != "s3cret" {
		t.Errorf("mode 0400: %q, %v", got, err)
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660, 0o606, 0o700 | 0o004} {
		_, err := ReadLine(write("open", "s3cret\n", mode))
		if !errors.Is(err, ErrPermissions) {
			t.Errorf("mode %04o: err = %v, want ErrPermissions", mode, err)
		}
	}
	for _, tc := range []struct{ name, content, want string }{
		{"empty", "", "empty"},
		{"only-newline", "\n", "empty"},
		{"two-lines", "s3cret\nsecond\n", "more than one line"},
		{"huge", strings.Repeat("s3cret", MaxLineSize), "longer than"},
	} {
		_, err := ReadLine(write(tc.name, tc.content, 0o600))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: error %q shows the content", tc.name, err)
		}
	}
	if _, err := ReadLine(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: %v", err)
	}
	if _, err := Read(write("big", strings.Repeat("x", 100), 0o600), 99); err == nil {
		t.Error("Read past maxSize accepted")
	}
}
