package mrkrepltest

import (
	"encoding/json"
	"fmt"

	"github.com/mrkrepl/mrkrepl/internal/authz"
)

// AdminPrincipal is the principal of the partition's admin connections
// (Partition.Connect): requests from inside the workers' own account carry
// no server-stamped identity, and the workers are configured to give them
// this one. It is every region's admin (workers.Config.Admins): every key's
// default policy names it.
const AdminPrincipal = "MRK/admin"

// NewRegionPolicy returns the region policy the partition's workers use: the
// admin may do everything; each account in apps may create and list keys
// and list aliases (what it may do with a key is the key's
// policy's business).
func NewRegionPolicy(apps ...string) (*authz.Policy, error) {
	stmts := []map[string]any{{
		"Sid": "Admins", "Effect": "Allow", "Principal": map[string]any{"MRK": []string{AdminPrincipal}},
		"Action": "kms:*", "Resource": "*",
	}}
	if len(apps) > 0 {
		stmts = append(stmts, map[string]any{
			"Sid": "Applications", "Effect": "Allow", "Principal": map[string]any{"MRK": apps},
			"Action": []string{"kms:CreateKey", "kms:ListKeys", "kms:ListAliases"}, "Resource": "*",
		})
	}
	doc, err := json.Marshal(map[string]any{"Version": "2012-10-17", "Statement": stmts})
	if err != nil {
		return nil, err
	}
	pol, err := authz.Parse(doc)
	if err != nil {
		return nil, fmt.Errorf("region policy: %w", err)
	}
	return pol, nil
}

// RegionPolicy is the region policy the partition's workers run with (for
// a test that starts more workers of its own).
func (p *Partition) RegionPolicy() *authz.Policy { return p.regionPolicy }
