package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
)

// TestHandoverKeepsVersionDates hands a key with two versions over to its
// replica and back: the new primary shows each version's dates as it saw
// them (when the material arrived, when it began to encrypt with it), not
// the hand-over's time, and the old primary, primary again, shows its
// original dates exactly.
func TestHandoverKeepsVersionDates(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{})
	ctx := ctxT(t, time.Minute)
	us, eu := p.Region("us-east-1").Client, p.Region("eu-west-1").Client
	key, _ := newReplicatedKey(t, ctx, us, "eu-west-1")
	if _, err := us.RotateKey(ctx, key.KeyID); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*client.Client{us, eu} {
		if _, err := c.WaitKey(ctx, key.KeyID, client.VersionActive(2)); err != nil {
			t.Fatal(err)
		}
	}
	before, err := us.DescribeKey(ctx, key.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // a hand-over time distinct from every version's dates
	handover := time.Now()
	handOver(t, ctx, us, eu, key.KeyID)

	after, err := eu.DescribeKey(ctx, key.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	if len(after.VersionDetails) != 2 {
		t.Fatalf("new primary: version details %+v, want 2", after.VersionDetails)
	}
	for i, d := range after.VersionDetails {
		orig := before.VersionDetails[i]
		if d.Version != orig.Version || d.State != orig.State {
			t.Errorf("new primary: version %d %s, want %d %s", d.Version, d.State, orig.Version, orig.State)
		}
		// The replica got each version just after the primary made it,
		// and began to encrypt with it just after the primary did.
		if d.CreatedAt.Before(orig.CreatedAt) || !d.CreatedAt.Before(handover) {
			t.Errorf("new primary: version %d created %s; made %s in us-east-1, handed over %s", d.Version, d.CreatedAt, orig.CreatedAt, handover)
		}
		if d.ActivatedAt == nil || d.ActivatedAt.Before(*orig.ActivatedAt) || !d.ActivatedAt.Before(handover) {
			t.Errorf("new primary: version %d activated %v; activated %s in us-east-1, handed over %s", d.Version, d.ActivatedAt, orig.ActivatedAt, handover)
		}
	}

	// Back to us-east-1: its own dates, kept while it was a replica.
	handOver(t, ctx, eu, us, key.KeyID)
	back, err := us.DescribeKey(ctx, key.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range back.VersionDetails {
		orig := before.VersionDetails[i]
		if !d.CreatedAt.Equal(orig.CreatedAt) || d.ActivatedAt == nil || !d.ActivatedAt.Equal(*orig.ActivatedAt) {
			t.Errorf("primary again: version %d created %s activated %v, want %s and %s", d.Version, d.CreatedAt, d.ActivatedAt, orig.CreatedAt, orig.ActivatedAt)
		}
	}
}

// handOver moves keyID's primary role from one region to another and waits
// until both agree.
func handOver(t *testing.T, ctx context.Context, from, to *client.Client, keyID string) {
	t.Helper()
	if _, err := from.UpdatePrimaryRegion(ctx, keyID, to.Region()); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*client.Client{from, to} {
		k, err := c.WaitKey(ctx, keyID, client.PrimaryIs(to.Region()))
		if err != nil {
			t.Fatal(err)
		}
		if want := api.RoleReplica; c == to {
			if k.Role != api.RolePrimary {
				t.Fatalf("%s: role %s, want PRIMARY", c.Region(), k.Role)
			}
		} else if k.Role != want {
			t.Fatalf("%s: role %s, want %s", c.Region(), k.Role, want)
		}
	}
}
