package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/softhsm"
)

// softhsmDemo makes a throwaway SoftHSM2 token per region (under dir, with
// its own softhsm2.conf) and an RSK in each. In mixed mode the regions
// alternate: SoftHSM2, soft, SoftHSM2, …
//
// SoftHSM2 cannot run the protocol's KDF inside the token, so the demo turns
// on AllowHostKDF: Z is read out for the host-side KDF (docs/PKCS11.md).
//
// A token an earlier demo made in dir is used again, with its keys and RSK
// (--data); soft names the URI of a soft region.
func softhsmDemo(mode, dir string, soft func(string) string) (func(string) string, hsmsvc.Options, error) {
	opts := hsmsvc.Options{AllowHostKDF: true}
	uris := map[string]string{}
	var order []string // regions in the order first asked for
	return func(region string) string {
		if uri, ok := uris[region]; ok {
			return uri
		}
		order = append(order, region)
		if mode == "mixed" && len(order)%2 == 0 {
			uris[region] = soft(region)
			return uris[region]
		}
		tokens, label := filepath.Join(dir, "softhsm"), "demo-"+region
		uri, err := softhsm.OpenToken(tokens, label)
		if errors.Is(err, fs.ErrNotExist) {
			uri, err = softhsm.CreateToken(tokens, label)
			if err == nil {
				_, err = hsmsvc.InitPKCS11RSK(context.Background(), uri, opts)
			}
		}
		if err != nil {
			// hsmsvc.Open reports the bad URI with this error's text.
			return "pkcs11:error=" + fmt.Sprint(err)
		}
		uris[region] = uri
		return uri
	}, opts, nil
}
