package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/messages"
)

// The lifecycle subcommands of "mrkrepl key" (docs/LIFECYCLE.md): rotate,
// update-primary, schedule-deletion, cancel-deletion, and wait, which
// polls describe-key until conditions hold. rotate and update-primary start
// work that ends later, in several regions: with --wait they poll the
// region asked (--region) and show on stderr each change of what they
// wait for, as "replicate --wait" does.

// defaultWaitTimeout bounds --wait unless --wait-timeout says otherwise.
const defaultWaitTimeout = 2 * time.Minute

// keyStatus judges a key during a wait: a line for the progress on stderr
// (printed whenever it changes), whether the wait is over, and an error if
// it can never be. key is nil when the region does not know the key.
type keyStatus func(key *api.Key) (line string, done bool, err error)

// errStillWaiting is the error of a wait cut short by --wait-timeout or an
// interrupt; the message says what it was still waiting for.
var errStillWaiting = errors.New("still waiting")

// pollKey describes keyID in --region (starting with first, if not nil)
// until status says the wait is over, for at most timeout. It returns the
// last key seen (nil if the region did not know it).
func (k *keyCmd) pollKey(ctx context.Context, timeout time.Duration, keyID string, first *api.Key, status keyStatus) (*api.Key, error) {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	key, last := first, ""
	describe := func() error {
		next, err := do(wctx, k, func(ctx context.Context) (*api.Key, error) { return k.c.DescribeKey(ctx, keyID) })
		switch {
		case client.IsNotFound(err):
			key = nil
		case err != nil:
			return err
		default:
			key = next
		}
		return nil
	}
	if first == nil {
		if err := describe(); err != nil {
			return nil, err
		}
	}
	delay := 10 * time.Millisecond
	for {
		line, done, err := status(key)
		if line != last {
			fmt.Fprintf(k.stderr, "%6.2fs  %s\n", time.Since(start).Seconds(), line)
			last = line
		}
		if done || err != nil {
			return key, err
		}
		select {
		case <-wctx.Done():
		case <-time.After(delay):
		}
		delay = min(2*delay, 500*time.Millisecond)
		if wctx.Err() == nil {
			err = describe()
		}
		switch {
		case ctx.Err() != nil:
			return key, fmt.Errorf("%w: interrupted (%s)", errStillWaiting, last)
		case wctx.Err() != nil:
			return key, fmt.Errorf("%w after %s (--wait-timeout): %s", errStillWaiting, timeout, last)
		case err != nil:
			return key, err
		}
	}
}

// waitTimeoutFlag adds --wait-timeout.
func waitTimeoutFlag(fs *flag.FlagSet, what string) *time.Duration {
	return fs.Duration("wait-timeout", defaultWaitTimeout, "with --wait: stop waiting after this long ("+what+" goes on)")
}

func keyRotate(ctx context.Context, k *keyCmd, fs *flag.FlagSet, args []string) error {
	wait := fs.Bool("wait", false, "wait until the new version is CURRENT and every ENABLED replica has confirmed it, showing the regions that hold it on stderr; exit 1 if a replica FAILED or --wait-timeout passes")
	waitTimeout := waitTimeoutFlag(fs, "the rotation")
	pos, err := k.flags.parse(fs, args, "KEY_ID")
	if err != nil {
		return err
	}
	if *waitTimeout <= 0 {
		return usageError(fs, "--wait-timeout %s: want more than 0", *waitTimeout)
	}
	if err := k.connect(); err != nil {
		return err
	}
	key, err := do(ctx, k, func(ctx context.Context) (*api.Key, error) { return k.c.RotateKey(ctx, pos[0]) })
	if err != nil {
		return err
	}
	if !*wait {
		return k.printKey(key)
	}
	version := newestVersion(key)
	final, werr := k.pollKey(ctx, *waitTimeout, pos[0], key, func(key *api.Key) (string, bool, error) {
		return rotationStatus(key, version)
	})
	if errors.Is(werr, errStillWaiting) {
		return fmt.Errorf("version %d of %s: %w; the rotation goes on (mrkrepl key describe %s --region %s)", version, pos[0], werr, pos[0], k.flags.region)
	}
	if final != nil {
		if err := k.printKey(final); err != nil {
			return err
		}
	}
	return werr
}

// newestVersion returns the highest version of key: the one a rotation
// just made.
func newestVersion(key *api.Key) uint32 {
	v := key.CurrentVersion
	for _, x := range key.Versions {
		v = max(v, x)
	}
	for _, d := range key.VersionDetails {
		v = max(v, d.Version)
	}
	return v
}

// rotationStatus judges the primary's view of a rotation to version (pure,
// for tests). It is over when the version is CURRENT (or already PREVIOUS)
// and every ENABLED replica confirmed the key's epoch, that is, uses it too.
// It can never be over while a replica that has not confirmed the version
// ended FAILED after the version was made: the version stays STAGED until
// that region is replicated to again or its replica is deleted.
func rotationStatus(key *api.Key, version uint32) (string, bool, error) {
	if key == nil {
		return "key not found", false, errors.New("the key is no longer in this region")
	}
	i := slices.IndexFunc(key.VersionDetails, func(d api.KeyVersion) bool { return d.Version == version })
	if i < 0 {
		// No details (not a primary, or an older worker): the current
		// version tells.
		if key.CurrentVersion >= version {
			return fmt.Sprintf("%-8s  version %d", api.VersionCurrent, version), true, nil
		}
		return fmt.Sprintf("%-8s  version %d", api.VersionStaged, version), false, nil
	}
	d := key.VersionDetails[i]
	if d.State == api.VersionStaged {
		var waiting []string
		for _, r := range key.Replicas {
			if slices.Contains(d.ReplicatedTo, r.Region) {
				continue
			}
			if r.State == api.ReplicaFailed && !r.UpdatedAt.Before(d.CreatedAt) {
				return fmt.Sprintf("%-8s  version %d: replica %s FAILED: %s", d.State, version, r.Region, r.Reason), false,
					fmt.Errorf("version %d stays %s: replica %s FAILED (%s); replicate to %s again (mrkrepl key replicate %s --to %s) or delete that replica",
						version, api.VersionStaged, r.Region, r.Reason, r.Region, key.KeyID, r.Region)
			}
			waiting = append(waiting, r.Region)
		}
		line := fmt.Sprintf("%-8s  version %d in %s", d.State, version, regionList(d.ReplicatedTo))
		if len(waiting) > 0 {
			line += "; waiting for " + regionList(waiting)
		}
		return line, false, nil
	}
	var unsynced []string
	for _, r := range key.Replicas {
		if r.State == api.ReplicaEnabled && r.SyncedEpoch < key.Epoch {
			unsynced = append(unsynced, r.Region)
		}
	}
	line := fmt.Sprintf("%-8s  version %d in %s (epoch %d)", d.State, version, regionList(d.ReplicatedTo), key.Epoch)
	if len(unsynced) > 0 {
		return line + "; waiting for " + regionList(unsynced) + " to confirm", false, nil
	}
	return line + "; every replica uses it", true, nil
}

// regionList joins region names for a progress line.
func regionList(regions []string) string {
	if len(regions) == 0 {
		return "no region"
	}
	return strings.Join(regions, ", ")
}

func keyUpdatePrimary(ctx context.Context, k *keyCmd, fs *flag.FlagSet, args []string) error {
	wait := fs.Bool("wait", false, "wait until --region names REGION as the key's primary and is no longer UPDATING, showing each change on stderr; exit 1 if the hand-over did not take place or --wait-timeout passes (REGION leaves UPDATING a moment later: mrkrepl key wait KEY_ID --primary REGION against it)")
	waitTimeout := waitTimeoutFlag(fs, "the hand-over")
	pos, err := k.flags.parse(fs, args, "KEY_ID", "REGION")
	if err != nil {
		return err
	}
	switch to := pos[1]; {
	case !messages.IsName(to):
		return usageError(fs, "REGION %q: not a region name (lowercase letters, digits and '-')", to)
	case *waitTimeout <= 0:
		return usageError(fs, "--wait-timeout %s: want more than 0", *waitTimeout)
	}
	if err := k.connect(); err != nil {
		return err
	}
	key, err := do(ctx, k, func(ctx context.Context) (*api.Key, error) {
		return k.c.UpdatePrimaryRegion(ctx, pos[0], pos[1])
	})
	if err != nil {
		return err
	}
	if !*wait {
		return k.printKey(key)
	}
	final, werr := k.pollKey(ctx, *waitTimeout, pos[0], key, func(key *api.Key) (string, bool, error) {
		return handoverStatus(key, k.flags.region, pos[1])
	})
	if errors.Is(werr, errStillWaiting) {
		return fmt.Errorf("hand-over of %s to %s: %w; it goes on (mrkrepl key describe %s --region %s)", pos[0], pos[1], werr, pos[0], k.flags.region)
	}
	if final != nil {
		if err := k.printKey(final); err != nil {
			return err
		}
	}
	return werr
}

// handoverStatus judges the old primary's view of a hand-over to target
// (pure, for tests): over when the key names target as its primary and is
// no longer UPDATING.
func handoverStatus(key *api.Key, region, target string) (string, bool, error) {
	switch {
	case key == nil:
		return "key not found", false, fmt.Errorf("the key is no longer in %s", region)
	case key.PrimaryRegion == target && key.KeyState != api.KeyStateUpdating:
		return fmt.Sprintf("%-8s  %s is the primary (epoch %d); %s is a %s", key.KeyState, target, key.Epoch, region, strings.ToLower(key.Role)), true, nil
	case key.KeyState == api.KeyStateUpdating:
		to := key.PendingPrimary
		if to == "" {
			to = target
		}
		return fmt.Sprintf("%-8s  %s hands the key over to %s (epoch %d)", key.KeyState, region, to, key.Epoch), false, nil
	}
	// Neither UPDATING nor done: the hand-over did not take place.
	return fmt.Sprintf("%-8s  primary %s", key.KeyState, key.PrimaryRegion), false,
		fmt.Errorf("the hand-over to %s did not take place: the key is %s in %s with primary %s", target, key.KeyState, region, key.PrimaryRegion)
}

func keyScheduleDeletion(ctx context.Context, k *keyCmd, fs *flag.FlagSet, args []string) error {
	days := fs.Int("days", 0, "the waiting period: `N` days, 1 to 30 (default: the region's, 7 days unless its workers are configured otherwise)")
	pos, err := k.flags.parse(fs, args, "KEY_ID")
	if err != nil {
		return err
	}
	if setFlags(fs)["days"] && (*days < 1 || *days > 30) {
		return usageError(fs, "--days %d: want 1 to 30", *days)
	}
	if err := k.connect(); err != nil {
		return err
	}
	key, err := do(ctx, k, func(ctx context.Context) (*api.Key, error) {
		return k.c.ScheduleKeyDeletion(ctx, pos[0], *days)
	})
	if err != nil {
		return err
	}
	if err := k.printKey(key); err != nil {
		return err
	}
	if k.flags.output == outputTable && key.DeletionDate != nil {
		fmt.Fprintf(k.stderr, "the key is unusable in %s and will be deleted there at %s; until then: mrkrepl key cancel-deletion %s --region %s\n",
			k.flags.region, timePtrText(key.DeletionDate), key.KeyID, k.flags.region)
	}
	return nil
}

func keyCancelDeletion(ctx context.Context, k *keyCmd, fs *flag.FlagSet, args []string) error {
	pos, err := k.flags.parse(fs, args, "KEY_ID")
	if err != nil {
		return err
	}
	if err := k.connect(); err != nil {
		return err
	}
	key, err := do(ctx, k, func(ctx context.Context) (*api.Key, error) { return k.c.CancelKeyDeletion(ctx, pos[0]) })
	if err != nil {
		return err
	}
	return k.printKey(key)
}

// replicaNone is the state of --replica REGION=NONE: the primary lists no
// replica in REGION.
const replicaNone = "NONE"

var (
	keyStates     = []string{api.KeyStateEnabled, api.KeyStateUpdating, api.KeyStatePendingDeletion}
	replicaStates = []string{api.ReplicaCreating, api.ReplicaEnabled, api.ReplicaUpdating, api.ReplicaPendingDeletion, api.ReplicaFailed, replicaNone}
)

// replicaConds is the repeatable --replica REGION=STATE.
type replicaConds []replicaCond

type replicaCond struct{ region, state string }

func (r *replicaConds) String() string {
	var s []string
	for _, c := range *r {
		s = append(s, c.region+"="+c.state)
	}
	return strings.Join(s, ",")
}

func (r *replicaConds) Set(v string) error {
	region, state, ok := strings.Cut(v, "=")
	state = strings.ToUpper(state)
	switch {
	case !ok || !messages.IsName(region):
		return fmt.Errorf("%q: want REGION=STATE", v)
	case !slices.Contains(replicaStates, state):
		return fmt.Errorf("%q: state %q, want one of %s", v, state, strings.Join(replicaStates, ", "))
	}
	*r = append(*r, replicaCond{region, state})
	return nil
}

// waitConds are the conditions of "key wait".
type waitConds struct {
	currentVersion uint
	primary        string
	state          string
	replicas       replicaConds
	gone           bool
}

// met reports whether key meets every condition (pure, for tests).
func (c *waitConds) met(key *api.Key) bool {
	if key == nil || c.gone {
		return key == nil && c.gone
	}
	if c.currentVersion > 0 && uint(key.CurrentVersion) < c.currentVersion ||
		c.primary != "" && !client.PrimaryIs(c.primary)(key) ||
		c.state != "" && key.KeyState != c.state {
		return false
	}
	for _, rc := range c.replicas {
		state := replicaNone
		if i := slices.IndexFunc(key.Replicas, func(r api.Replica) bool { return r.Region == rc.region }); i >= 0 {
			state = key.Replicas[i].State
		}
		if state != rc.state {
			return false
		}
	}
	return true
}

// keySummary is a one-line account of a key for "key wait".
func keySummary(key *api.Key) string {
	if key == nil {
		return "not found"
	}
	s := fmt.Sprintf("%s %s, primary %s, current version %d, epoch %d", key.KeyState, strings.ToLower(key.Role), key.PrimaryRegion, key.CurrentVersion, key.Epoch)
	if staged := stagedVersions(key); len(staged) > 0 {
		s += fmt.Sprintf(", staged %v", staged)
	}
	if key.PendingPrimary != "" {
		s += ", handing over to " + key.PendingPrimary
	}
	if key.DeletionDate != nil {
		s += ", deletion " + timePtrText(key.DeletionDate)
	}
	if len(key.Replicas) > 0 {
		var rs []string
		for _, r := range key.Replicas {
			rs = append(rs, r.Region+" "+r.State)
		}
		s += "; replicas " + strings.Join(rs, ", ")
	}
	return s
}

func keyWait(ctx context.Context, k *keyCmd, fs *flag.FlagSet, args []string) error {
	var c waitConds
	fs.UintVar(&c.currentVersion, "current-version", 0, "condition: the key's current version is at least `N`")
	fs.StringVar(&c.primary, "primary", "", "condition: the key names `REGION` as its primary and is not UPDATING")
	fs.StringVar(&c.state, "state", "", "condition: the key is in `STATE` in --region: "+strings.Join(keyStates, ", "))
	fs.Var(&c.replicas, "replica", "condition (on a primary), `REGION=STATE`: the replica in REGION is in STATE, one of "+strings.Join(replicaStates, ", ")+" (NONE: no replica there); repeatable")
	fs.BoolVar(&c.gone, "gone", false, "condition: --region does not know the key (it was deleted there)")
	waitTimeout := fs.Duration("wait-timeout", defaultWaitTimeout, "stop waiting after this long: exit 1")
	pos, err := k.flags.parse(fs, args, "KEY_ID")
	if err != nil {
		return err
	}
	c.state = strings.ToUpper(c.state)
	set := setFlags(fs)
	switch {
	case !set["current-version"] && !set["primary"] && !set["state"] && !set["replica"] && !set["gone"]:
		return usageError(fs, "give at least one condition: --current-version, --primary, --state, --replica or --gone")
	case c.gone && (set["current-version"] || set["primary"] || set["state"] || set["replica"]):
		return usageError(fs, "--gone excludes the other conditions")
	case set["current-version"] && c.currentVersion == 0:
		return usageError(fs, "--current-version 0: want 1 or more")
	case c.primary != "" && !messages.IsName(c.primary):
		return usageError(fs, "--primary %q: not a region name (lowercase letters, digits and '-')", c.primary)
	case c.state != "" && !slices.Contains(keyStates, c.state):
		return usageError(fs, "--state %q: want one of %s", c.state, strings.Join(keyStates, ", "))
	case *waitTimeout <= 0:
		return usageError(fs, "--wait-timeout %s: want more than 0", *waitTimeout)
	}
	if err := k.connect(); err != nil {
		return err
	}
	final, err := k.pollKey(ctx, *waitTimeout, pos[0], nil, func(key *api.Key) (string, bool, error) {
		return keySummary(key), c.met(key), nil
	})
	if err != nil {
		return err
	}
	if final == nil {
		// --gone: no key to show (and, for --output json, no object).
		if k.flags.output == outputTable {
			_, err = fmt.Fprintf(k.stdout, "key %s is not in %s\n", pos[0], k.flags.region)
		}
		return err
	}
	return k.printKey(final)
}
