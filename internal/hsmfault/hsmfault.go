// Package hsmfault injects faults between the steps of an HSM backend's
// operations that change more than one object, for tests only: a crash
// (kill -9) between two steps cannot otherwise be made to happen at a
// chosen place. A test attaches a hook to the context it passes to the
// backend; the backend calls After at the end of each step and stops there,
// as a crash would, if the hook returns an error. Nothing outside tests
// attaches a hook, and without one After returns nil.
package hsmfault

import "context"

// Step names a point in an operation, after a step and before the next.
type Step string

// The steps of UnwrapFromPeer, in order (docs/RELIABILITY.md): what a crash
// at each leaves in the HSM.
const (
	// UnwrapDerived: the RWK is derived; nothing has changed yet (RAKB
	// present, no K).
	UnwrapDerived Step = "unwrap:derived"
	// UnwrapKeyStored: K is stored; the RAKB is still there.
	UnwrapKeyStored Step = "unwrap:key_stored"
	// UnwrapRAKBDestroyed: K is stored and the RAKB destroyed; only the
	// return is left.
	UnwrapRAKBDestroyed Step = "unwrap:rakb_destroyed"
)

// UnwrapSteps lists the steps of UnwrapFromPeer in order.
var UnwrapSteps = []Step{UnwrapDerived, UnwrapKeyStored, UnwrapRAKBDestroyed}

type hookKey struct{}

// With returns ctx carrying hook, which the backend calls after each step
// of an operation run with it. A hook that returns an error stops the
// operation there with that error; it may also block or panic.
func With(ctx context.Context, hook func(Step) error) context.Context {
	return context.WithValue(ctx, hookKey{}, hook)
}

// After runs the hook ctx carries, if any, for step.
func After(ctx context.Context, step Step) error {
	if hook, _ := ctx.Value(hookKey{}).(func(Step) error); hook != nil {
		return hook(step)
	}
	return nil
}
