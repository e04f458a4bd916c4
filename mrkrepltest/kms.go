package mrkrepltest

import (
	"context"
	"fmt"
	"net"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/workers"
)

// kmsConfig is a region's worker's KMS endpoint with Options.KMS: plain
// HTTP on 127.0.0.1, a random port the first time and the same port after
// a restart (StartWorker), so Region.KMSURL stays valid.
func (p *Partition) kmsConfig(r *Region) (*workers.KMSConfig, error) {
	if !p.opts.KMS {
		return nil, nil
	}
	addr := r.kmsAddr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("region %s: kms listener: %w", r.Name, err)
	}
	r.kmsAddr = l.Addr().String()
	return &workers.KMSConfig{Listener: l, AccountID: p.opts.KMSAccountID, ARNPartition: p.opts.KMSARNPartition}, nil
}

// CreateAccessKey issues an access key of region's KMS API bound to
// principal ("ACCOUNT/user"), as the region's admin would with
// "mrkrepl access-key create". Its SecretAccessKey is set.
func (p *Partition) CreateAccessKey(ctx context.Context, region, principal string) (*api.AccessKey, error) {
	nc, err := p.Connect(region, "access-key")
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	return client.New(nc, region).CreateAccessKey(ctx, principal)
}

// DefaultAppPrincipal is the principal of DefaultApp's first user, the
// creator (and so a principal of the default policy) of the keys its
// Region.Client creates.
func DefaultAppPrincipal() string { return DefaultApp.Account + "/" + DefaultApp.Users[0] }
