package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/bench"
	"github.com/mrkrepl/mrkrepl/internal/natsauth"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/rogpeppe/go-internal/testscript"
)

func TestMain(m *testing.M) {
	// The test binary, run again by "bench --separate-servers" as a region's
	// server, serves instead of running the tests.
	bench.ServeNATSIfChild()
	testscript.Main(m, map[string]func(){"mrkrepl": main})
}

// TestScripts runs the CLI scripts in testdata/script (testscript format).
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir:  "testdata/script",
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){"capture": capture, "partition": partitionCmd},
		Setup: func(env *testscript.Env) error {
			// The demo may use SoftHSM2; pass its switches through.
			for _, k := range []string{"MRKREPL_REQUIRE_SOFTHSM", "SOFTHSM2_CONF"} {
				env.Setenv(k, os.Getenv(k))
			}
			switch name := strings.TrimPrefix(filepath.Base(env.WorkDir), "script-"); {
			case name == "key_auth":
				return startAuthServer(env)
			case name == "key_wait_failed":
				// No proxy: no run gets anywhere; runs time out fast.
				return startPartition(env, mrkrepltest.Options{NoProxy: true,
					RunTimeout: time.Second, MaxAttempts: 2, SweepInterval: 50 * time.Millisecond})
			case name == "key_deletion":
				// Deletion after a short waiting period (a request's
				// --days still counts in days), found by a fast sweeper.
				return startPartition(env, mrkrepltest.Options{
					SweepInterval: 50 * time.Millisecond, DeletionWaitingPeriod: 2 * time.Second})
			case name == "key_rotate_down":
				// Runs time out fast and give up after two attempts.
				return startPartition(env, mrkrepltest.Options{
					RunTimeout: time.Second, MaxAttempts: 2, SweepInterval: 50 * time.Millisecond})
			case strings.HasPrefix(name, "key_") || strings.HasPrefix(name, "events"):
				return startPartition(env, mrkrepltest.Options{})
			}
			return nil
		},
	})
}

// startPartition runs a partition of three regions for a script of the
// client commands, until the script ends. The script finds the regions'
// NATS URLs in $US, $EU and $AP; MRKREPL_SERVER is $US.
func startPartition(env *testscript.Env, opts mrkrepltest.Options) error {
	opts.Dir = filepath.Join(env.WorkDir, ".partition")
	p, err := mrkrepltest.Start(context.Background(), opts)
	if err != nil {
		return fmt.Errorf("start partition: %w", err)
	}
	env.Defer(p.Close)
	for v, region := range map[string]string{"US": "us-east-1", "EU": "eu-west-1", "AP": "ap-southeast-2"} {
		env.Setenv(v, p.Region(region).URL)
	}
	env.Setenv("MRKREPL_SERVER", p.Region("us-east-1").URL)
	env.Values[partitionKey{}] = p
	return nil
}

// partitionKey finds the script's partition in its values.
type partitionKey struct{}

// partitionCmd is the script command "partition stop-proxy|start-proxy":
// it cuts the regions of the script's partition off from each other, or
// joins them again.
func partitionCmd(ts *testscript.TestScript, neg bool, args []string) {
	p, _ := ts.Value(partitionKey{}).(*mrkrepltest.Partition)
	if neg || len(args) != 1 || p == nil {
		ts.Fatalf("usage: partition stop-proxy|start-proxy (in a script with a partition)")
	}
	switch args[0] {
	case "stop-proxy":
		p.KillProxy()
	case "start-proxy":
		ts.Check(p.StartProxy(context.Background()))
	default:
		ts.Fatalf("partition: unknown action %q", args[0])
	}
}

// startAuthServer runs one nats-server for region us-east-1 with the
// production accounts of internal/natsauth (the demo application's user
// "app"), and no worker, until the script ends: $AUTH is its URL,
// $WORK/<worker|proxy|app>.password holds each user's password.
func startAuthServer(env *testscript.Env) error {
	passwords := map[string]string{}
	for role, key := range map[string]string{"worker": natsauth.Key(natsauth.Account, natsauth.UserWorker), "proxy": natsauth.Key(natsauth.Account, natsauth.UserProxy),
		"app": natsauth.Key(natsauth.DefaultApp.Account, natsauth.DefaultApp.Users[0])} {
		passwords[key] = messages.NewID()
		if err := os.WriteFile(filepath.Join(env.WorkDir, role+".password"), []byte(passwords[key]+"\n"), 0o600); err != nil {
			return err
		}
	}
	o := &server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true,
		StoreDir: filepath.Join(env.WorkDir, ".nats"), NoLog: true, NoSigs: true,
	}
	if err := (natsauth.Spec{Region: "us-east-1", Apps: []natsauth.App{natsauth.DefaultApp}, Passwords: passwords}).ServerOptions(o); err != nil {
		return err
	}
	s, err := server.NewServer(o)
	if err != nil {
		return err
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return errors.New("nats-server not ready within 10s")
	}
	env.Defer(s.Shutdown)
	env.Setenv("AUTH", s.ClientURL())
	return nil
}

// capture is the script command "capture NAME REGEXP": it sets $NAME to
// the first group of REGEXP's first match in the last command's stdout
// (multi-line mode), for the ids the commands print.
func capture(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: capture NAME REGEXP")
	}
	re, err := regexp.Compile("(?m)" + args[1])
	if err != nil {
		ts.Fatalf("capture: %v", err)
	}
	m := re.FindStringSubmatch(ts.ReadFile("stdout"))
	if len(m) < 2 {
		ts.Fatalf("capture: no match for %q in stdout", args[1])
	}
	ts.Setenv(args[0], m[1])
}
