package bench

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/softhsm"
)

// hsmSetup makes the HSMs of one run: two for the crypto bound, one per
// region for the partition, all of the same backend.
type hsmSetup struct {
	mode string
	dir  string // SoftHSM2 token directory
	log  *slog.Logger
}

func newHSMSetup(mode, dir string, log *slog.Logger) (*hsmSetup, error) {
	if mode == HSMSoftHSM {
		if err := softhsm.Available(); err != nil {
			return nil, fmt.Errorf("--hsm %s: %w", mode, err)
		}
	}
	return &hsmSetup{mode: mode, dir: dir, log: log}, nil
}

// hostKDF is the one concession SoftHSM2 needs: its ECDH derive accepts
// only CKD_NULL, so Z is read out for the host-side KDF (docs/PKCS11.md).
// The benchmark's tokens are throwaway.
func (h *hsmSetup) options() hsmsvc.Options {
	return hsmsvc.Options{AllowHostKDF: h.mode == HSMSoftHSM, Logger: h.log}
}

// boundPair opens two fresh HSMs for MeasureBound.
func (h *hsmSetup) boundPair(ctx context.Context) (a, b hsmsvc.HSM, err error) {
	var uris [2]string
	for i := range uris {
		if uris[i], err = h.uri(ctx, fmt.Sprintf("bound-%c", 'a'+i)); err != nil {
			return nil, nil, err
		}
	}
	if a, err = hsmsvc.Open(ctx, uris[0], h.options()); err != nil {
		return nil, nil, fmt.Errorf("open hsm for the crypto bound: %w", err)
	}
	if b, err = hsmsvc.Open(ctx, uris[1], h.options()); err != nil {
		_ = a.Close()
		return nil, nil, fmt.Errorf("open hsm for the crypto bound: %w", err)
	}
	return a, b, nil
}

// partition returns the HSM URI of every region, and the options to open
// them with.
func (h *hsmSetup) partition(ctx context.Context, regions []string) (func(string) string, hsmsvc.Options, error) {
	uris := map[string]string{}
	for _, r := range regions {
		u, err := h.uri(ctx, r)
		if err != nil {
			return nil, hsmsvc.Options{}, err
		}
		uris[r] = u
	}
	return func(r string) string { return uris[r] }, h.options(), nil
}

var tokenSeq atomic.Uint64

// uri returns a fresh HSM's URI: "soft:" in memory, or a new SoftHSM2 token
// holding an RSK.
func (h *hsmSetup) uri(ctx context.Context, name string) (string, error) {
	if h.mode != HSMSoftHSM {
		return "soft:", nil
	}
	label := fmt.Sprintf("bench-%d-%s", tokenSeq.Add(1), name)
	if len(label) > 32 {
		label = label[:32]
	}
	uri, err := softhsm.CreateToken(h.dir, label)
	if err != nil {
		return "", fmt.Errorf("--hsm %s: %w", h.mode, err)
	}
	if _, err := hsmsvc.InitPKCS11RSK(ctx, uri, h.options()); err != nil {
		return "", fmt.Errorf("--hsm %s: token %s: %w", h.mode, label, err)
	}
	return uri, nil
}
