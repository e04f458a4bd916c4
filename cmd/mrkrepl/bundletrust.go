package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/mrkrepl/mrkrepl/internal/secretfile"
	"github.com/mrkrepl/mrkrepl/messages"
)

// The partition root key (docs/OPERATIONS.md, "Trust bundle"): an ECDSA
// P-384 key, kept offline, that signs every trust bundle of the partition
// with a growing serial. Its private half is a PKCS #8 PEM file of mode
// 0600 (read with the checks of every secret file); its public half a PEM
// "PUBLIC KEY" (SubjectPublicKeyInfo) file that may carry a "Partition:"
// header binding it to one partition. Workers and proxies are given the
// public file (bundle_root_key).

// maxKeyFileSize bounds a root key file.
const maxKeyFileSize = 16 << 10

// rootPEMPartition is the PEM header naming the partition a root key signs for.
const rootPEMPartition = "Partition"

// newRootKey makes a fresh root key.
func newRootKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P384(), rand.Reader) }

// rootPrivatePEM encodes a root key as PKCS #8 PEM.
func rootPrivatePEM(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// rootPublicPEM encodes a root public key, with the partition header if
// partition is set.
func rootPublicPEM(pub *ecdsa.PublicKey, partition string) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	blk := &pem.Block{Type: "PUBLIC KEY", Bytes: der}
	if partition != "" {
		blk.Headers = map[string]string{rootPEMPartition: partition}
	}
	return pem.EncodeToMemory(blk), nil
}

// readRootPrivateKey reads a root key file (a secret file: mode 0600).
func readRootPrivateKey(path string) (*ecdsa.PrivateKey, error) {
	data, err := secretfile.Read(path, maxKeyFileSize)
	if err != nil {
		return nil, fmt.Errorf("root key: %w", err)
	}
	defer clear(data)
	blk, _ := pem.Decode(data)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("root key %s: no PRIVATE KEY (PKCS #8) PEM block", path)
	}
	defer clear(blk.Bytes)
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("root key %s: %w", path, err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P384() {
		return nil, fmt.Errorf("root key %s: want an ECDSA P-384 key", path)
	}
	return ek, nil
}

// readRootPublicKey reads a root public key file, and the partition it is
// bound to ("" if none).
func readRootPublicKey(path string) (*ecdsa.PublicKey, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, "", fmt.Errorf("bundle root key: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return nil, "", fmt.Errorf("bundle root key %s: %w", path, err)
	}
	blk, rest := pem.Decode(data)
	if blk == nil || blk.Type != "PUBLIC KEY" || len(bytes.TrimSpace(rest)) != 0 {
		return nil, "", fmt.Errorf("bundle root key %s: want exactly one PUBLIC KEY PEM block", path)
	}
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, "", fmt.Errorf("bundle root key %s: %w", path, err)
	}
	ek, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return nil, "", fmt.Errorf("bundle root key %s: want ECDSA P-384, got %T", path, pub)
	}
	if _, err := messages.KID(ek); err != nil {
		return nil, "", fmt.Errorf("bundle root key %s: %w", path, err)
	}
	partition := blk.Headers[rootPEMPartition]
	for h := range blk.Headers {
		if h != rootPEMPartition {
			return nil, "", fmt.Errorf("bundle root key %s: unknown PEM header %q", path, h)
		}
	}
	if partition != "" && !messages.IsName(partition) {
		return nil, "", fmt.Errorf("bundle root key %s: partition %q: bad name", path, partition)
	}
	return ek, partition, nil
}

// writeNewFile writes data to path, which must not exist, atomically: the
// content goes to a temporary file in the same directory that is then
// linked to path (which fails if path appeared meanwhile), so a concurrent
// reader or writer sees no file or the whole one.
func writeNewFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Link(tmp.Name(), path)
}

// replaceFile writes data over path atomically (temporary file, rename).
func replaceFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// bundleTrust is how a daemon judges its bundle file: against the root
// key, with the highest serial put in force so far (in memory, and in the
// serial file if configured), or, with insecure_unsigned_bundle, as bare
// JSON. It is safe for concurrent use.
type bundleTrust struct {
	root       *ecdsa.PublicKey // nil: unsigned bundles (insecure)
	rootKID    string
	partition  string // the root's, from its file; "" if not bound
	serialFile string

	mu      sync.Mutex
	highest uint64            // the serial in force (0: none yet)
	inForce [sha256.Size]byte // SHA-256 of the bundle JSON in force
	part    string            // the partition in force
}

// newBundleTrust reads the root public key and the serial file.
func newBundleTrust(rootKeyFile, serialFile string, insecure bool) (*bundleTrust, error) {
	t := &bundleTrust{serialFile: serialFile}
	if rootKeyFile == "" {
		if !insecure {
			return nil, errors.New("no bundle root key: set bundle_root_key (--bundle-root-key), or insecure_unsigned_bundle for development")
		}
		return t, nil
	}
	var err error
	if t.root, t.partition, err = readRootPublicKey(rootKeyFile); err != nil {
		return nil, err
	}
	kid, _ := messages.KID(t.root)
	t.rootKID = hex.EncodeToString(kid)
	if serialFile != "" {
		data, err := os.ReadFile(serialFile)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("bundle serial file: %w", err)
		default:
			if t.highest, err = strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64); err != nil {
				return nil, fmt.Errorf("bundle serial file %s: not a serial", serialFile)
			}
		}
	}
	return t, nil
}

// signed reports whether bundles must be signed.
func (t *bundleTrust) signed() bool { return t.root != nil }

// verified is a bundle file that passed read.
type verified struct {
	data   []byte // the file's bytes
	bundle *messages.Bundle
	serial uint64 // 0 for an unsigned bundle
	sum    [sha256.Size]byte
}

// read reads and judges a bundle file without changing anything: its
// signature, its partition (the root's and the one in force), its serial
// (not below the one in force; the same serial only with the same bundle).
// data is returned even on error, for the reloader's change detection.
func (t *bundleTrust) read(path string) (*verified, []byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("load bundle: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, messages.MaxSignedBundleSize+1))
	if err != nil {
		return nil, nil, fmt.Errorf("load bundle %s: %w", path, err)
	}
	if !t.signed() {
		b, err := messages.ParseBundle(data)
		if err != nil {
			return nil, data, fmt.Errorf("load bundle %s: %w", path, err)
		}
		return &verified{data: data, bundle: b, sum: sha256.Sum256(data)}, data, nil
	}
	t.mu.Lock()
	min, inForce, part := t.highest, t.inForce, t.part
	t.mu.Unlock()
	if part == "" {
		part = t.partition
	}
	sb, err := messages.VerifyBundleFor(data, t.root, part, min)
	if err != nil {
		return nil, data, fmt.Errorf("load bundle %s: %w", path, err)
	}
	sum := sha256.Sum256(sb.JSON)
	if sb.Serial == min && inForce != ([sha256.Size]byte{}) && sum != inForce {
		return nil, data, fmt.Errorf("load bundle %s: %w: serial %d is in force with other content; a new bundle needs a higher serial (mrkrepl bundle sign)",
			path, messages.ErrBundleOlderSerial, sb.Serial)
	}
	return &verified{data: data, bundle: sb.Bundle, serial: sb.Serial, sum: sum}, data, nil
}

// accepted records v as the bundle in force, and persists its serial if
// configured (an error means it is in force but not persisted).
func (t *bundleTrust) accepted(v *verified) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.part = v.bundle.Partition()
	if !t.signed() {
		return nil
	}
	grew := v.serial > t.highest
	t.highest, t.inForce = v.serial, v.sum
	if grew && t.serialFile != "" {
		if err := replaceFile(t.serialFile, []byte(strconv.FormatUint(v.serial, 10)+"\n"), 0o600); err != nil {
			return fmt.Errorf("bundle serial file: %w", err)
		}
	}
	return nil
}

// describe is for the log: how the bundle in force was judged.
func (t *bundleTrust) describe(v *verified) []any {
	if !t.signed() {
		return []any{"signed", false}
	}
	return []any{"signed", true, "serial", v.serial, "root_kid", t.rootKID[:16]}
}
