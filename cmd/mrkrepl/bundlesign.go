package main

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/mrkrepl/mrkrepl/messages"
)

// runBundleRootKey is "mrkrepl bundle root-key create|public".
func runBundleRootKey(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "public" {
		fs := newFlagSet("bundle root-key public", "[--partition NAME] KEY > root.pub", stderr)
		partition := fs.String("partition", "", "bind the public key file to partition `NAME`: workers and proxies then refuse a bundle of another partition")
		pos, err := parseInterspersed(fs, args[1:])
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return usageError(fs, "want the root key file")
		}
		if *partition != "" && !messages.IsName(*partition) {
			return usageError(fs, "--partition %q: bad name", *partition)
		}
		k, err := readRootPrivateKey(pos[0])
		if err != nil {
			return err
		}
		pub, err := rootPublicPEM(&k.PublicKey, *partition)
		if err != nil {
			return err
		}
		_, err = stdout.Write(pub)
		return err
	}
	if len(args) == 0 || args[0] != "create" {
		fs := newFlagSet("bundle root-key", "create|public ...", stderr)
		return usageError(fs, "want: mrkrepl bundle root-key create --out KEY [--pub FILE] [--partition NAME], or mrkrepl bundle root-key public KEY")
	}
	fs := newFlagSet("bundle root-key create", "--out KEY [--pub FILE] [--partition NAME]", stderr)
	out := fs.String("out", "", "write the private key to `FILE` (PKCS #8 PEM, mode 0600; must not exist) (required)")
	pubOut := fs.String("pub", "", "write the public key to `FILE` (default: KEY.pub)")
	partition := fs.String("partition", "", "bind the public key file to partition `NAME` (recommended)")
	usage := fs.Usage
	fs.Usage = func() {
		usage()
		fmt.Fprint(stderr, `
Makes the partition's root key (ECDSA P-384), which signs its trust bundles
(mrkrepl bundle sign). Keep the private key offline; give the public key file
to every worker and proxy (bundle_root_key). An existing file is never
overwritten.
`)
	}
	if err := parseFlags(fs, args[1:], false); err != nil {
		return err
	}
	if err := required(fs, "out", *out); err != nil {
		return err
	}
	if *partition != "" && !messages.IsName(*partition) {
		return usageError(fs, "--partition %q: bad name", *partition)
	}
	if *pubOut == "" {
		*pubOut = *out + ".pub"
	}
	k, err := newRootKey()
	if err != nil {
		return err
	}
	priv, err := rootPrivatePEM(k)
	if err != nil {
		return err
	}
	pub, err := rootPublicPEM(&k.PublicKey, *partition)
	if err != nil {
		return err
	}
	if err := writeNewFile(*out, priv, 0o600); err != nil {
		return fmt.Errorf("root key: %w", err)
	}
	clear(priv)
	if err := replaceFile(*pubOut, pub, 0o644); err != nil {
		return fmt.Errorf("root public key: %w", err)
	}
	kid, _ := messages.KID(&k.PublicKey)
	fmt.Fprintf(stdout, "root key %x\n", kid)
	fmt.Fprintf(stderr, "wrote %s (private, keep it offline) and %s (public: bundle_root_key)\n", *out, *pubOut)
	return nil
}

// runBundleSign is "mrkrepl bundle sign".
func runBundleSign(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bundle sign", "--root-key KEY --out SIGNED [--serial N] BUNDLE.json", stderr)
	rootKey := fs.String("root-key", "", "the partition's root key `FILE` (private, mode 0600) (required)")
	out := fs.String("out", "", "write the signed bundle to `FILE` (atomically) (required)")
	serial := fs.Uint64("serial", 0, "the bundle's `serial` (default: the previous signed bundle's + 1, or 1)")
	previous := fs.String("previous", "", "the signed bundle in force, for the serial (default: the --out file, if it exists)")
	usage := fs.Usage
	fs.Usage = func() {
		usage()
		fmt.Fprint(stderr, `
Signs the trust bundle (its exact bytes) with the root key under a serial
higher than the previous one's: workers and proxies refuse a lower serial, so
an older bundle (with the RSKs it still trusts) cannot be put back. If the
previous signed bundle holds the same bundle and no --serial is given,
nothing is written.
`)
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := required(fs, "root-key", *rootKey, "out", *out); err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError(fs, "want one bundle file (JSON)")
	}
	data, err := os.ReadFile(pos[0])
	if err != nil {
		return err
	}
	if _, err := messages.ParseBundle(data); err != nil {
		return fmt.Errorf("%s: %w", pos[0], err)
	}
	k, err := readRootPrivateKey(*rootKey)
	if err != nil {
		return err
	}
	prevPath := *previous
	if prevPath == "" {
		prevPath = *out
	}
	var prev *messages.SignedBundle
	if raw, err := os.ReadFile(prevPath); err == nil {
		if prev, err = messages.VerifySignedBundle(raw, &k.PublicKey, 0); err != nil {
			return fmt.Errorf("previous signed bundle %s: %w", prevPath, err)
		}
	} else if *previous != "" || !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("previous signed bundle: %w", err)
	}
	next := *serial
	switch {
	case prev != nil && next == 0 && bytes.Equal(prev.JSON, data):
		fmt.Fprintf(stderr, "%s already holds this bundle, serial %d: unchanged\n", prevPath, prev.Serial)
		if prevPath == *out {
			return nil
		}
		next = prev.Serial
	case prev != nil && next == 0:
		next = prev.Serial + 1
	case prev != nil && next <= prev.Serial:
		return fmt.Errorf("--serial %d: the previous signed bundle %s has serial %d; the new one needs a higher serial", next, prevPath, prev.Serial)
	case next == 0:
		next = 1
	}
	if prev != nil && prev.Partition != "" {
		if b, _ := messages.ParseBundle(data); b.Partition() != prev.Partition {
			return fmt.Errorf("%s is for partition %q, the previous signed bundle for %q", pos[0], b.Partition(), prev.Partition)
		}
	}
	signed, err := messages.SignBundle(data, next, k)
	if err != nil {
		return err
	}
	if err := replaceFile(*out, signed, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", *out, err)
	}
	fmt.Fprintf(stdout, "signed %s: serial %d\n", *out, next)
	return nil
}

// runBundleVerify is "mrkrepl bundle verify".
func runBundleVerify(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bundle verify", "--root-key PUB [--min-serial N] [--json] SIGNED", stderr)
	rootKey := fs.String("root-key", "", "the partition root's public key `FILE` (PEM) (required)")
	minSerial := fs.Uint64("min-serial", 0, "refuse a serial below `N` (the one in force)")
	asJSON := fs.Bool("json", false, "print the verified bundle (JSON) instead of a summary")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := required(fs, "root-key", *rootKey); err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError(fs, "want one signed bundle file")
	}
	pub, partition, err := readRootPublicKey(*rootKey)
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(pos[0])
	if err != nil {
		return err
	}
	sb, err := messages.VerifyBundleFor(raw, pub, partition, *minSerial)
	if err != nil {
		return fmt.Errorf("%s: %w", pos[0], err)
	}
	if *asJSON {
		_, err := stdout.Write(sb.JSON)
		return err
	}
	fmt.Fprintf(stdout, "%s: signed by root key %s, serial %d, partition %s, regions %s, %d keys\n", pos[0],
		hex.EncodeToString(sb.RootKID), sb.Serial, sb.Partition, strings.Join(sb.Bundle.Regions(), ", "), len(sb.Bundle.Keys()))
	return nil
}

// loadAnyBundle reads a bundle file for the tools that only read it (list,
// inspect): the JSON form, or a signed bundle whose content is shown
// without checking its signature (mrkrepl bundle verify does that).
func loadAnyBundle(path string) (*messages.Bundle, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load bundle: %w", err)
	}
	if t := bytes.TrimLeft(raw, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		return messages.ParseBundle(raw)
	}
	sb, err := messages.ParseSignedBundle(raw)
	if err != nil {
		return nil, fmt.Errorf("load bundle %s: %w", path, err)
	}
	b, err := messages.ParseBundle(sb.JSON)
	if err != nil {
		return nil, fmt.Errorf("load bundle %s: %w", path, err)
	}
	return b, nil
}
