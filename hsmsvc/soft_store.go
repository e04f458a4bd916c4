package hsmsvc

// The soft backend's store at rest. Every object is one file
//
//	<dir>/<name with "/" replaced by ".">.sealed
//
// holding sealedMagic ‖ nonce (12 bytes) ‖ AES-256-GCM(master key, object,
// AAD = sealedMagic ‖ name), written atomically (temporary file, fsync,
// rename, fsync of the directory). The AAD binds each file to its name, so
// files swapped or renamed in the directory fail to open. The master key is
// 32 raw bytes in its own file (mode 0600). docs/CRYPTO.md has the details.

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

const (
	// sealedMagic starts every sealed file and its AAD: format and version.
	sealedMagic   = "mrkrepl-soft-hsm/1\n"
	sealedSuffix  = ".sealed"
	tempPrefix    = ".tmp-"
	masterKeyName = "master.key"
	lockName      = "LOCK"
	masterKeySize = 32
	gcmNonceSize  = 12
	gcmTagSize    = 16
)

// softStore persists sealed objects in a directory. It is not safe for
// concurrent use; softHSM serialises calls with its mutex.
type softStore struct {
	dir  string
	aead cipher.AEAD
	lock *os.File
}

// openSoftStore locks dir (creating it 0700 if absent), removes temporary
// files a crash left behind and loads or creates the master key.
func openSoftStore(cfg softConfig, log *slog.Logger) (s *softStore, err error) {
	dir := cfg.dir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open soft hsm store: %v", err)
	}
	lock, err := lockDir(filepath.Join(dir, lockName))
	if err != nil {
		return nil, fmt.Errorf("open soft hsm store %s: %v", dir, err)
	}
	defer func() {
		if err != nil {
			lock.Close()
		}
	}()
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("open soft hsm store: %v", err)
	}
	objects := 0
	for _, e := range entries {
		switch name := e.Name(); {
		case strings.HasPrefix(name, tempPrefix):
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				return nil, fmt.Errorf("open soft hsm store: remove stale temporary file: %v", err)
			}
		case strings.HasSuffix(name, sealedSuffix):
			objects++
		}
	}
	keyFile := cfg.masterKeyFile
	if keyFile == "" {
		keyFile = filepath.Join(dir, masterKeyName)
	}
	mk, err := loadMasterKey(keyFile, objects, log)
	if err != nil {
		return nil, fmt.Errorf("open soft hsm store %s: %v", dir, err)
	}
	defer clear(mk)
	block, err := aes.NewCipher(mk)
	if err != nil {
		return nil, fmt.Errorf("open soft hsm store: %v", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("open soft hsm store: %v", err)
	}
	return &softStore{dir: dir, aead: aead, lock: lock}, nil
}

// loadMasterKey reads the master key, or creates it if it is absent and the
// store holds no objects: a store whose master key went missing must not
// silently get a new one.
func loadMasterKey(path string, objects int, log *slog.Logger) ([]byte, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		if objects > 0 {
			return nil, fmt.Errorf("master key file %s does not exist but the store holds %d sealed objects; restore the master key file", path, objects)
		}
		return createMasterKey(path, log)
	}
	if err != nil {
		return nil, fmt.Errorf("master key file: %v", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("master key file %s is not a regular file", path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		log.Warn("soft hsm master key file is accessible to group or others", "path", path, "mode", fi.Mode().Perm().String())
	}
	mk, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("master key file: %v", err)
	}
	if len(mk) != masterKeySize {
		clear(mk)
		return nil, fmt.Errorf("master key file %s holds %d bytes, want %d raw bytes", path, len(mk), masterKeySize)
	}
	return mk, nil
}

func createMasterKey(path string, log *slog.Logger) ([]byte, error) {
	mk := make([]byte, masterKeySize)
	rand.Read(mk)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create master key file: %v", err)
	}
	_, err = f.Write(mk)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(filepath.Dir(path))
	}
	if err != nil {
		os.Remove(path)
		clear(mk)
		return nil, fmt.Errorf("create master key file: %v", err)
	}
	log.Info("soft hsm created a master key", "path", path)
	return mk, nil
}

// fileName maps an object name ("rsk", "key/mrk-…/1", "rakb/…") to its file.
// Names are built from validated ids and hold no '.'.
func (s *softStore) fileName(name string) string {
	return filepath.Join(s.dir, strings.ReplaceAll(name, "/", ".")+sealedSuffix)
}

func sealedAAD(name string) []byte { return []byte(sealedMagic + name) }

// put seals plaintext as object name, replacing any previous version.
func (s *softStore) put(name string, plaintext []byte) error {
	out := make([]byte, len(sealedMagic)+gcmNonceSize, len(sealedMagic)+gcmNonceSize+len(plaintext)+gcmTagSize)
	copy(out, sealedMagic)
	rand.Read(out[len(sealedMagic):])
	out = s.aead.Seal(out, out[len(sealedMagic):], plaintext, sealedAAD(name))

	f, err := os.CreateTemp(s.dir, tempPrefix)
	if err != nil {
		return fmt.Errorf("store object %q: %v", name, err)
	}
	tmp := f.Name()
	_, err = f.Write(out)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.fileName(name))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("store object %q: %v", name, err)
	}
	if err := syncDir(s.dir); err != nil {
		return fmt.Errorf("store object %q: %v", name, err)
	}
	return nil
}

// remove deletes object name; removing an absent object is not an error.
func (s *softStore) remove(name string) error {
	err := os.Remove(s.fileName(name))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove object %q: %v", name, err)
	}
	if err := syncDir(s.dir); err != nil {
		return fmt.Errorf("remove object %q: %v", name, err)
	}
	return nil
}

// load opens every object in the directory and calls fn with its name and
// plaintext, which fn must not retain (it is cleared afterwards).
func (s *softStore) load(fn func(name string, plaintext []byte) error) error {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("load soft hsm store: %v", err)
	}
	for _, e := range entries {
		file, ok := strings.CutSuffix(e.Name(), sealedSuffix)
		if !ok {
			continue
		}
		name := strings.ReplaceAll(file, ".", "/")
		raw, err := os.ReadFile(filepath.Join(s.dir, e.Name()))
		if err != nil {
			return fmt.Errorf("load object %q: %v", name, err)
		}
		if len(raw) < len(sealedMagic)+gcmNonceSize+gcmTagSize || string(raw[:len(sealedMagic)]) != sealedMagic {
			return fmt.Errorf("load object %q: not a sealed mrkrepl soft hsm object", name)
		}
		nonce := raw[len(sealedMagic) : len(sealedMagic)+gcmNonceSize]
		pt, err := s.aead.Open(nil, nonce, raw[len(sealedMagic)+gcmNonceSize:], sealedAAD(name))
		if err != nil {
			return fmt.Errorf("load object %q: authentication failed: wrong master key, or the file was modified or renamed", name)
		}
		err = fn(name, pt)
		clear(pt)
		if err != nil {
			return fmt.Errorf("load object %q: %w", name, err)
		}
	}
	return nil
}

func (s *softStore) close() error { return s.lock.Close() }

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
