package main

import (
	"strings"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
)

func TestRotationStatus(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	key := func(state string, replicatedTo []string, epoch uint64, replicas ...api.Replica) *api.Key {
		return &api.Key{KeyID: "mrk-00000000000000000000000000000001", Epoch: epoch, CurrentVersion: 1,
			VersionDetails: []api.KeyVersion{
				{Version: 1, State: api.VersionCurrent, ReplicatedTo: []string{"eu", "us"}},
				{Version: 2, State: state, ReplicatedTo: replicatedTo, CreatedAt: t0},
			},
			Replicas: replicas}
	}
	enabled := func(region string, synced uint64) api.Replica {
		return api.Replica{Region: region, State: api.ReplicaEnabled, SyncedEpoch: synced, UpdatedAt: t0}
	}
	for _, tc := range []struct {
		name      string
		key       *api.Key
		done, err bool
		line      string
	}{
		{"staged", key(api.VersionStaged, []string{"us"}, 1, enabled("eu", 1)), false, false, "STAGED    version 2 in us; waiting for eu"},
		{"current, not synced", key(api.VersionCurrent, []string{"eu", "us"}, 2, enabled("eu", 1)), false, false, "CURRENT   version 2 in eu, us (epoch 2); waiting for eu to confirm"},
		{"current, synced", key(api.VersionCurrent, []string{"eu", "us"}, 2, enabled("eu", 2)), true, false, "CURRENT   version 2 in eu, us (epoch 2); every replica uses it"},
		{"previous", key(api.VersionPrevious, []string{"us"}, 3), true, false, "PREVIOUS  version 2 in us (epoch 3); every replica uses it"},
		{"failed after staging", key(api.VersionStaged, []string{"us"}, 1,
			api.Replica{Region: "eu", State: api.ReplicaFailed, Reason: "gave up", UpdatedAt: t0.Add(time.Second)}), false, true, "STAGED    version 2: replica eu FAILED: gave up"},
		{"failed before staging", key(api.VersionStaged, []string{"us"}, 1,
			api.Replica{Region: "eu", State: api.ReplicaFailed, Reason: "gave up", UpdatedAt: t0.Add(-time.Second)}), false, false, "STAGED    version 2 in us; waiting for eu"},
		{"no details", &api.Key{CurrentVersion: 2}, true, false, "CURRENT   version 2"},
		{"gone", nil, false, true, "key not found"},
	} {
		line, done, err := rotationStatus(tc.key, 2)
		if line != tc.line || done != tc.done || (err != nil) != tc.err {
			t.Errorf("%s: got %q, %v, %v; want %q, %v, error %v", tc.name, line, done, err, tc.line, tc.done, tc.err)
		}
	}
}

func TestHandoverStatus(t *testing.T) {
	for _, tc := range []struct {
		name      string
		key       *api.Key
		done, err bool
	}{
		{"updating", &api.Key{KeyState: api.KeyStateUpdating, PrimaryRegion: "us", PendingPrimary: "eu", Role: api.RolePrimary}, false, false},
		{"done", &api.Key{KeyState: api.KeyStateEnabled, PrimaryRegion: "eu", Role: api.RoleReplica}, true, false},
		{"not taken place", &api.Key{KeyState: api.KeyStateEnabled, PrimaryRegion: "us", Role: api.RolePrimary}, false, true},
		{"gone", nil, false, true},
	} {
		line, done, err := handoverStatus(tc.key, "us", "eu")
		if done != tc.done || (err != nil) != tc.err || line == "" {
			t.Errorf("%s: got %q, %v, %v", tc.name, line, done, err)
		}
	}
}

func TestWaitConds(t *testing.T) {
	key := &api.Key{KeyState: api.KeyStateEnabled, PrimaryRegion: "us", CurrentVersion: 2,
		Replicas: []api.Replica{{Region: "eu", State: api.ReplicaPendingDeletion}}}
	var rc replicaConds
	if err := rc.Set("eu=pending_deletion"); err != nil {
		t.Fatal(err)
	}
	var none replicaConds
	if err := none.Set("ap=NONE"); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"eu", "EU=ENABLED", "eu=GONE"} {
		if err := new(replicaConds).Set(bad); err == nil {
			t.Errorf("--replica %s accepted", bad)
		}
	}
	for _, tc := range []struct {
		name string
		c    waitConds
		key  *api.Key
		want bool
	}{
		{"version", waitConds{currentVersion: 2}, key, true},
		{"version not yet", waitConds{currentVersion: 3}, key, false},
		{"primary", waitConds{primary: "us"}, key, true},
		{"other primary", waitConds{primary: "eu"}, key, false},
		{"state", waitConds{state: api.KeyStateEnabled}, key, true},
		{"replica", waitConds{replicas: rc}, key, true},
		{"no replica", waitConds{replicas: none}, key, true},
		{"all", waitConds{currentVersion: 1, primary: "us", replicas: append(rc, none...)}, key, true},
		{"gone", waitConds{gone: true}, nil, true},
		{"not gone", waitConds{gone: true}, key, false},
		{"missing", waitConds{primary: "us"}, nil, false},
	} {
		if got := tc.c.met(tc.key); got != tc.want {
			t.Errorf("%s: met = %v, want %v", tc.name, got, tc.want)
		}
	}
	if s := keySummary(key); !strings.Contains(s, "replicas eu PENDING_DELETION") {
		t.Errorf("summary %q", s)
	}
}

func TestAfterCompletion(t *testing.T) {
	run := &api.Replication{ReplicationID: "r1", Peer: "eu", State: api.StateCompleted}
	for _, tc := range []struct {
		name    string
		replica *api.Replica
		want    failureOutcome
		next    string
	}{
		{"enabled", &api.Replica{Region: "eu", State: api.ReplicaEnabled, ReplicationID: "r1"}, replicaReady, ""},
		{"next version", &api.Replica{Region: "eu", State: api.ReplicaCreating, ReplicationID: "r2"}, followRun, "r2"},
		{"not recorded yet", &api.Replica{Region: "eu", State: api.ReplicaCreating, ReplicationID: "r1"}, keepPolling, ""},
		{"next version already done", &api.Replica{Region: "eu", State: api.ReplicaEnabled, ReplicationID: "r2"}, followRun, "r2"},
		{"dropped", nil, replicaReady, ""},
	} {
		key := &api.Key{}
		if tc.replica != nil {
			key.Replicas = []api.Replica{*tc.replica}
		}
		got, next, _ := afterCompletion(run, key)
		if got != tc.want || next != tc.next {
			t.Errorf("%s: got %v %q, want %v %q", tc.name, got, next, tc.want, tc.next)
		}
	}
}
