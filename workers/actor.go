package workers

import (
	"context"
)

// This file holds the audit helpers: who caused a change (the actor carried
// in the context).

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
