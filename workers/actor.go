package workers

import (
	"context"
	"slices"

	"github.com/mrkrepl/mrkrepl/api"
)

// This file holds the audit helpers: who caused a change (the actor carried
// in the context) and the regions an event names.

type actorKey struct{}

// withActor records who caused what ctx is used for, for audit events.
func withActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

func actorFrom(ctx context.Context) string {
	if a, ok := ctx.Value(actorKey{}).(string); ok {
		return a
	}
	return "worker"
}

func allRegions(k *api.Key) []string {
	rs := []string{k.PrimaryRegion}
	for _, r := range k.Replicas {
		rs = append(rs, r.Region)
	}
	slices.Sort(rs)
	return rs
}
