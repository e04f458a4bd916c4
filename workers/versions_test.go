package workers

import (
	"slices"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
)

// keyWith builds a primary record in us: versions with their states and
// holders, and replicas.
func keyWith(current uint32, versions map[uint32][]string, staged uint32, replicas ...string) *api.Key {
	k := &api.Key{KeyID: "mrk-00000000000000000000000000000001", Region: "us", Role: api.RolePrimary, PrimaryRegion: "us", CurrentVersion: current, Epoch: 1}
	for v := uint32(1); v <= uint32(len(versions)); v++ {
		st := api.VersionPrevious
		switch v {
		case current:
			st = api.VersionCurrent
		case staged:
			st = api.VersionStaged
		}
		k.Versions = append(k.Versions, v)
		k.VersionDetails = append(k.VersionDetails, api.KeyVersion{Version: v, State: st, ReplicatedTo: versions[v]})
	}
	for _, r := range replicas {
		k.Replicas = append(k.Replicas, api.Replica{Region: r, State: api.ReplicaEnabled})
	}
	return k
}

func TestMissingVersionsCurrentFirst(t *testing.T) {
	k := keyWith(2, map[uint32][]string{1: {"us"}, 2: {"us"}, 3: {"us"}}, 3, "eu")
	if got := missingVersions(k, "eu"); !slices.Equal(got, []uint32{2, 1, 3}) {
		t.Errorf("missing for a new replica: %v, want current first then ascending [2 1 3]", got)
	}
	markHeld(k, "eu", 2)
	markHeld(k, "eu", 2) // idempotent
	if got := missingVersions(k, "eu"); !slices.Equal(got, []uint32{1, 3}) {
		t.Errorf("missing after v2: %v", got)
	}
	if got := versionDetail(k, 2).ReplicatedTo; !slices.Equal(got, []string{"eu", "us"}) {
		t.Errorf("watermark %v, want sorted [eu us]", got)
	}
	if complete(k, "eu") {
		t.Error("eu lacks v1 (not staged) but counts as complete")
	}
	markHeld(k, "eu", 1)
	if !complete(k, "eu") || replicaState(k, "eu", api.ReplicaCreating) != api.ReplicaEnabled {
		t.Error("eu holds every non-staged version but is not ENABLED")
	}
	if replicaState(k, "eu", api.ReplicaPendingDeletion) != api.ReplicaPendingDeletion {
		t.Error("a replica pending deletion lost its state")
	}
	if replicaState(k, "ap", "") != api.ReplicaCreating {
		t.Error("a replica holding nothing is not CREATING")
	}
}

func TestTryActivateWaitsForEveryHolder(t *testing.T) {
	now := time.Unix(1000, 0)
	// eu and ap hold v1; ap is still being created (holds nothing).
	k := keyWith(1, map[uint32][]string{1: {"eu", "us"}, 2: {"us"}}, 2, "eu", "ap")
	if got := holders(k); !slices.Equal(got, []string{"eu"}) {
		t.Fatalf("holders %v, want [eu]: a replica holding nothing does not hold a rotation back", got)
	}
	if v := tryActivate(k, now); v != 0 || k.CurrentVersion != 1 {
		t.Fatalf("activated %d before eu confirmed", v)
	}
	if got := waitingFor(k, 2); !slices.Equal(got, []string{"eu"}) {
		t.Errorf("waiting for %v", got)
	}
	markHeld(k, "eu", 2)
	if v := tryActivate(k, now); v != 2 || k.CurrentVersion != 2 || k.Epoch != 2 {
		t.Fatalf("activate: got v%d current %d epoch %d", v, k.CurrentVersion, k.Epoch)
	}
	if versionDetail(k, 1).State != api.VersionPrevious || versionDetail(k, 2).State != api.VersionCurrent || versionDetail(k, 2).ActivatedAt == nil {
		t.Errorf("states after activation: %+v", k.VersionDetails)
	}
	if v := tryActivate(k, now); v != 0 || k.Epoch != 2 {
		t.Error("activation is not idempotent")
	}
}

func TestForgetUnblocksRotation(t *testing.T) {
	k := keyWith(1, map[uint32][]string{1: {"eu", "us"}, 2: {"us"}}, 2, "eu")
	k.Replicas = nil
	forget(k, "eu")
	if holdsAny(k, "eu") {
		t.Fatal("forgotten region still holds a version")
	}
	if v := tryActivate(k, time.Now()); v != 2 {
		t.Errorf("with its only holder deleted the staged version did not activate (got %d)", v)
	}
}

func TestNeedsSync(t *testing.T) {
	k := keyWith(1, map[uint32][]string{1: {"eu", "us"}}, 0, "eu", "ap")
	k.Epoch = 3
	if !needsSync(k, api.Replica{Region: "eu", SyncedEpoch: 2}) {
		t.Error("eu behind the epoch needs no sync")
	}
	if needsSync(k, api.Replica{Region: "eu", SyncedEpoch: 3}) {
		t.Error("eu at the epoch needs a sync")
	}
	if needsSync(k, api.Replica{Region: "ap"}) {
		t.Error("ap holds nothing yet, but needs a sync")
	}
}

func TestNormalizeOldRecords(t *testing.T) {
	k := &keyRecord{Key: api.Key{
		Region: "us", Role: api.RolePrimary, Versions: []uint32{1}, CurrentVersion: 1,
		Replicas: []api.Replica{{Region: "eu", State: api.ReplicaEnabled}, {Region: "ap", State: api.ReplicaFailed}},
	}}
	normalize(k)
	if k.KeyState != api.KeyStateEnabled || k.Epoch != 1 {
		t.Errorf("state %q epoch %d", k.KeyState, k.Epoch)
	}
	if d := versionDetail(&k.Key, 1); d == nil || !slices.Equal(d.ReplicatedTo, []string{"eu", "us"}) || d.State != api.VersionCurrent {
		t.Errorf("watermark from an old record: %+v", k.VersionDetails)
	}
	if got := addVersion([]uint32{1, 3}, 2); !slices.Equal(got, []uint32{1, 2, 3}) {
		t.Errorf("addVersion: %v", got)
	}
}
