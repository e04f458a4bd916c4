package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/messages"
)

// runHSM is "mrkrepl hsm init": create the region's RSK inside a PKCS#11
// token, once, before "mrkrepl rsk" prints it for the trust bundle. It is
// idempotent, so a container entrypoint can run it at every start.
func runHSM(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "init" {
		fmt.Fprintln(stderr, "usage: mrkrepl hsm init --hsm URI [--pin-file FILE]")
		return errUsage
	}
	fs := newFlagSet("hsm init", "--hsm URI [--pin-file FILE]", stderr)
	hsmURI := fs.String("hsm", "", "the token's pkcs11: `URI` (the soft backend makes its RSK by itself)")
	pinFile := fs.String("pin-file", "", "read the token's user PIN from `FILE` (or give pin-source= in the URI)")
	if err := parseFlags(fs, args[1:], false); err != nil {
		return err
	}
	if err := required(fs, "hsm", *hsmURI); err != nil {
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
	if !strings.HasPrefix(strings.ToLower(*hsmURI), "pkcs11:") {
		// The soft backend creates its RSK when first opened.
		h, err := hsmsvc.Open(ctx, *hsmURI, opts)
		if err != nil {
			return err
		}
		defer h.Close()
		kid, err := messages.KID(h.Signer().Public())
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "rsk %x\n", kid)
		return nil
	}
	pub, err := hsmsvc.InitPKCS11RSK(ctx, *hsmURI, opts)
	created := err == nil
	if errors.Is(err, hsmsvc.ErrExists) && pub != nil {
		err = nil
	}
	if err != nil {
		return err
	}
	kid, err := messages.KID(pub)
	if err != nil {
		return err
	}
	if created {
		fmt.Fprintf(stdout, "rsk %x created\n", kid)
	} else {
		fmt.Fprintf(stdout, "rsk %x already present\n", kid)
	}
	return nil
}
