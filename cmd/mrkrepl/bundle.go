package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/messages"
)

// runRSK opens a region's HSM and prints its RSK as a one-region bundle
// fragment. Operators of each region run it and hand the fragment to
// whoever assembles the partition's bundle with "mrkrepl bundle".
func runRSK(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("rsk", "--hsm URI --region NAME --partition NAME [flags]", stderr)
	hsmURI := fs.String("hsm", "", "HSM `URI` holding the region's RSK (required)")
	region := fs.String("region", "", "the `region` the RSK signs for (required)")
	partition := fs.String("partition", "", "the `partition` the region belongs to (required)")
	pinFile := fs.String("pin-file", "", "read the PKCS#11 PIN from `FILE`")
	validFor := fs.Duration("valid-for", 365*24*time.Hour, "validity of the bundle entry, from now")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if err := required(fs, "hsm", *hsmURI, "region", *region, "partition", *partition); err != nil {
		return err
	}
	opts := hsmsvc.Options{}
	if *pinFile != "" {
		pin, err := readSecretFile(*pinFile)
		if err != nil {
			return fmt.Errorf("--pin-file: %w", err)
		}
		opts.PIN = pin
	}
	hsm, err := hsmsvc.Open(ctx, *hsmURI, opts)
	if err != nil {
		return err
	}
	defer hsm.Close()
	pub := hsm.Signer().Public()
	kid, err := messages.KID(pub)
	if err != nil {
		return err
	}
	now := time.Now().UTC().Truncate(time.Second)
	b, err := messages.NewBundle(*partition, []string{*region}, []messages.BundleKey{{
		Region: *region, KID: kid, PublicKey: pub, NotBefore: now, NotAfter: now.Add(*validFor),
	}})
	if err != nil {
		return err
	}
	return writeJSON(stdout, b)
}

// runBundle merges fragments (or whole bundles) of one partition.
func runBundle(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bundle", "FRAGMENT.json... > bundle.json", stderr)
	if err := parseFlags(fs, args, true); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "no fragment given")
		fs.Usage()
		return errUsage
	}
	var partition string
	var regions []string
	var keys []messages.BundleKey
	for _, path := range fs.Args() {
		b, err := messages.LoadBundle(path)
		if err != nil {
			return err
		}
		if partition == "" {
			partition = b.Partition()
		} else if b.Partition() != partition {
			return fmt.Errorf("%s is for partition %q, not %q", path, b.Partition(), partition)
		}
		for _, r := range b.Regions() {
			if !slices.Contains(regions, r) {
				regions = append(regions, r)
			}
		}
		keys = append(keys, b.Keys()...)
	}
	merged, err := messages.NewBundle(partition, regions, keys)
	if err != nil {
		return err
	}
	return writeJSON(stdout, merged)
}

func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}
