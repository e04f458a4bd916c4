package main

import (
	"context"
	"crypto"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/messages"
)

// "mrkrepl rsk" prints a region's RSK as a one-region bundle fragment.
// Operators of each region run it and hand the fragment to whoever
// assembles the partition's bundle with "mrkrepl bundle". "mrkrepl rsk
// create" makes a new RSK in the region's HSM for a rotation and prints it
// the same way, for "mrkrepl bundle add" (docs/OPERATIONS.md, "RSK
// rotation").

// rskFlags are the flags of rsk and rsk create.
type rskFlags struct {
	hsm, region, partition, pinFile *string
	allowHostKDF                    *bool
	notBefore                       *string
	validFor                        *time.Duration
}

func addRSKFlags(fs *flag.FlagSet, notBefore string) rskFlags {
	return rskFlags{
		hsm:          fs.String("hsm", "", "HSM `URI` holding the region's RSK (required)"),
		region:       fs.String("region", "", "the `region` the RSK signs for (required)"),
		partition:    fs.String("partition", "", "the `partition` the region belongs to (required)"),
		pinFile:      fs.String("pin-file", "", "read the PKCS#11 PIN from `FILE`"),
		allowHostKDF: fs.Bool("allow-host-kdf", false, "open a PKCS#11 token that cannot run the KDF inside (SoftHSM2); as allow-host-kdf=true in the URI"),
		notBefore:    fs.String("not-before", notBefore, "start of the bundle entry's validity (`WHEN`): an RFC 3339 time, \"now\", or a duration from now (1h, 30m)"),
		validFor:     fs.Duration("valid-for", 365*24*time.Hour, "validity of the bundle entry, from its not_before"),
	}
}

// open checks the flags and opens the HSM.
func (f rskFlags) open(ctx context.Context, fs *flag.FlagSet) (hsmsvc.HSM, time.Time, time.Time, error) {
	var zero time.Time
	if err := required(fs, "hsm", *f.hsm, "region", *f.region, "partition", *f.partition); err != nil {
		return nil, zero, zero, err
	}
	now := time.Now().UTC().Truncate(time.Second)
	notBefore, err := parseWhen(*f.notBefore, now)
	if err != nil {
		return nil, zero, zero, usageError(fs, "--not-before: %v", err)
	}
	if *f.validFor <= 0 {
		return nil, zero, zero, usageError(fs, "--valid-for must be positive")
	}
	opts := hsmsvc.Options{AllowHostKDF: *f.allowHostKDF}
	if *f.pinFile != "" {
		pin, err := readSecretFile(*f.pinFile)
		if err != nil {
			return nil, zero, zero, fmt.Errorf("--pin-file: %w", err)
		}
		opts.PIN = pin
	}
	h, err := hsmsvc.Open(ctx, *f.hsm, opts)
	if err != nil {
		return nil, zero, zero, err
	}
	return h, notBefore, notBefore.Add(*f.validFor), nil
}

// fragment is a one-region bundle with pubs, each valid from notBefore to
// notAfter.
func (f rskFlags) fragment(pubs []crypto.PublicKey, notBefore, notAfter time.Time) (*messages.Bundle, error) {
	var keys []messages.BundleKey
	for _, pub := range pubs {
		keys = append(keys, messages.BundleKey{Region: *f.region, PublicKey: pub, NotBefore: notBefore, NotAfter: notAfter})
	}
	return messages.NewBundle(*f.partition, []string{*f.region}, keys)
}

func runRSK(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "create" {
		return runRSKCreate(ctx, args[1:], stdout, stderr)
	}
	fs := newFlagSet("rsk", "--hsm URI --region NAME --partition NAME [flags] > fragment.json", stderr)
	f := addRSKFlags(fs, "now")
	all := fs.Bool("all", false, "print every RSK the HSM holds (the first one and those made by \"mrkrepl rsk create\"), not only the first")
	usage := fs.Usage
	fs.Usage = func() {
		usage()
		fmt.Fprintln(stderr, "\nPrints the region's RSK (the HSM's first, or with --all every one) as a trust-bundle fragment.")
		fmt.Fprintln(stderr, `"mrkrepl rsk create" makes a new RSK in the HSM, for a rotation (mrkrepl rsk create -h).`)
	}
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	h, notBefore, notAfter, err := f.open(ctx, fs)
	if err != nil {
		return err
	}
	defer h.Close()
	signers := []crypto.Signer{h.Signer()}
	if *all {
		if rot, ok := h.(hsmsvc.RSKRotator); ok {
			if signers, err = rot.RSKs(ctx); err != nil {
				return err
			}
		}
	}
	var pubs []crypto.PublicKey
	for _, s := range signers {
		pubs = append(pubs, s.Public())
	}
	b, err := f.fragment(pubs, notBefore, notAfter)
	if err != nil {
		return err
	}
	return writeJSON(stdout, b)
}

// runRSKCreate is "mrkrepl rsk create": a new RSK in the region's HSM,
// printed as a bundle fragment valid from --not-before (in an hour by
// default, to leave time to distribute the bundle before the region signs
// with it).
func runRSKCreate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("rsk create", "--hsm URI --region NAME --partition NAME [flags] > fragment.json", stderr)
	f := addRSKFlags(fs, "1h")
	usage := fs.Usage
	fs.Usage = func() {
		usage()
		fmt.Fprint(stderr, `
Makes a new RSK inside the region's HSM, beside the ones it holds, and prints
it as a trust-bundle fragment for "mrkrepl bundle add". The region's workers
sign with it once a trust bundle that lists it is in force and its not_before
has passed; leave enough time to distribute the bundle to every worker and
proxy first (docs/OPERATIONS.md, "RSK rotation"). A soft: HSM directory is
locked while its worker runs: stop the worker for this command.
`)
	}
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if u := strings.ToLower(strings.TrimSpace(*f.hsm)); u == "soft:" || strings.HasPrefix(u, "soft:?") {
		return usageError(fs, "--hsm %s: an in-memory soft HSM forgets the new RSK when the command ends; give its directory (soft:/dir)", *f.hsm)
	}
	h, notBefore, notAfter, err := f.open(ctx, fs)
	if err != nil {
		return err
	}
	defer h.Close()
	rot, ok := h.(hsmsvc.RSKRotator)
	if !ok {
		return fmt.Errorf("the %s hsm cannot hold a second rsk", h.Backend())
	}
	s, err := rot.CreateRSK(ctx)
	if err != nil {
		return err
	}
	kid, err := messages.KID(s.Public())
	if err != nil {
		return err
	}
	b, err := f.fragment([]crypto.PublicKey{s.Public()}, notBefore, notAfter)
	if err != nil {
		return err
	}
	if err := writeJSON(stdout, b); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "rsk %x created in the hsm for %s, valid from %s to %s\n", kid, *f.region,
		notBefore.Format(time.RFC3339), notAfter.Format(time.RFC3339))
	return nil
}

// parseWhen reads a point in time: an RFC 3339 time, "now", or a duration
// from now ("1h", "-10m", "+30s").
func parseWhen(s string, now time.Time) (time.Time, error) {
	if strings.EqualFold(s, "now") {
		return now, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q: want an RFC 3339 time, \"now\" or a duration from now (1h, -10m)", s)
	}
	return t.UTC(), nil
}
