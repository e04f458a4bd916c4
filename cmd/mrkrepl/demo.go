package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/internal/natsauth"
	"github.com/mrkrepl/mrkrepl/internal/obs"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", "[flags]", stderr)
	data := fs.String("data", "", "keep JetStream data and HSM state in `DIR` (default: a temporary directory, removed at exit)")
	serve := fs.Bool("serve", false, "after the demo, keep the partition running and print how to reach it, until interrupted")
	hsmMode := fs.String("hsm", "soft", "HSM backend per region: soft, softhsm (a throwaway SoftHSM2 token per region) or mixed (regions alternate)")
	delay := fs.Duration("delay", 0, "injected one-way delay between regions (WAN emulation), e.g. 50ms")
	timeout := fs.Duration("timeout", time.Minute, "give up if the demo's steps (replications, rotation, change of primary) take longer than this")
	newLogger := logFlags(fs, "warn")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	logger, err := newLogger(stderr)
	if err != nil {
		return usageError(fs, "%v", err)
	}
	if !validDemoHSM(*hsmMode) {
		return usageError(fs, "--hsm %q: want soft, softhsm or mixed", *hsmMode)
	}
	dir := *data
	if dir != "" {
		// The soft HSMs' stores want an absolute directory.
		if dir, err = filepath.Abs(dir); err != nil {
			return err
		}
	} else {
		if dir, err = os.MkdirTemp("", "mrkrepl-demo-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	hsmFor, hsmOpts, err := demoHSM(*hsmMode, dir, *data != "")
	if err != nil {
		return usageError(fs, "%v", err)
	}
	hsmOpts.Logger = logger

	start := time.Now()
	// One registry for the whole demo, each component's series labelled
	// instance="worker-<region>" or "proxy"; served with --serve.
	reg := obs.NewRegistry()
	// Secure by default: every region's server runs the accounts of
	// docs/NATS.md, and the workers decide by key policies. The demo's
	// application (mrkrepltest.DefaultApp) has one password in every region,
	// written into the data directory for --serve; a second application,
	// which no key's policy names, shows a refusal.
	appPassword, adminPassword := messages.NewID(), messages.NewID()
	p, err := mrkrepltest.Start(ctx, mrkrepltest.Options{
		Partition: "demo", Dir: dir, HSM: hsmFor, HSMOptions: hsmOpts,
		Logger: logger, ProxyDelay: *delay, Registerer: reg,
		Password: appPassword, AdminPassword: adminPassword,
		Apps: []natsauth.App{demoIntruder},
		KMS:  true, // each worker's AWS KMS API on 127.0.0.1 (demo_kms.go)
	})
	if err != nil {
		return fmt.Errorf("start partition: %w", err)
	}
	defer p.Close()
	regions := p.Regions()
	var names []string
	for _, r := range regions {
		names = append(names, fmt.Sprintf("%s (%s)", r.Name, r.HSM.Backend()))
	}
	fmt.Fprintf(stdout, "partition %q up in %s: %s, one proxy\n", p.Bundle.Partition(), time.Since(start).Round(time.Millisecond), strings.Join(names, ", "))

	dctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if err := demoScenario(dctx, stdout, regions); err != nil {
		return err
	}
	if err := demoRefusal(dctx, stdout, p); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "all checks passed")
	if !*serve {
		return nil
	}
	fmt.Fprintln(stdout)
	fmt.Fprintln(stdout, "serving until interrupted (Ctrl-C):")
	for _, r := range regions {
		fmt.Fprintf(stdout, "  %-15s %s\n", r.Name, r.URL)
		fmt.Fprintf(stdout, "  %-15s   api:      %s (request/reply, see docs/API.md)\n", "", layout.APISubject(r.Name, "<op>"))
		fmt.Fprintf(stdout, "  %-15s   requests: %s (publish a replicate-key event)\n", "", layout.RequestSubject(r.Name, api.OpReplicateKey))
		fmt.Fprintf(stdout, "  %-15s   events:   %s\n", "", layout.EventsWildcard(r.Name))
	}
	addr, err := obs.Serve(ctx, "127.0.0.1:0", reg, demoReady(p), logger)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nmetrics of every process of the demo (one endpoint; series labelled instance=worker-<region> or proxy):\n")
	for _, r := range regions {
		fmt.Fprintf(stdout, "  %-22s http://%s/metrics  instance=worker-%s\n", "worker "+r.Name, addr, r.Name)
	}
	fmt.Fprintf(stdout, "  %-22s http://%s/metrics  instance=proxy\n", "proxy", addr)
	fmt.Fprintf(stdout, "  %-22s http://%s/healthz  http://%s/readyz\n", "health", addr, addr)
	us := regions[0]
	// The servers run the accounts of docs/NATS.md: connect as the demo
	// application's first user (one password in every region), or as the
	// admin of the workers' account for stored events.
	app, appUser := mrkrepltest.DefaultApp.Account, mrkrepltest.DefaultApp.Users[0]
	pwFile := filepath.Join(dir, "app.password")
	adminFile := filepath.Join(dir, "admin.password")
	for f, pw := range map[string]string{pwFile: appPassword, adminFile: adminPassword} {
		if err := os.WriteFile(f, []byte(pw+"\n"), 0o600); err != nil {
			return err
		}
	}
	creds := fmt.Sprintf("--nats-user %s --nats-password-file %s", appUser, pwFile)
	fmt.Fprintf(stdout, "\ntry (as user %s of application account %s; its password, the same in every region, is in %s):\n", appUser, app, pwFile)
	fmt.Fprintf(stdout, "  nats --server %s --user %s --password \"$(cat %s)\" req %s '{}'\n", us.URL, appUser, pwFile, layout.APISubject(us.Name, api.OpCreateKey))
	fmt.Fprintf(stdout, "  nats --server %s --user %s --password \"$(cat %s)\" pub %s '{\"key_id\":\"<key id>\",\"replica_region\":\"%s\"}'\n", us.URL, appUser, pwFile, layout.RequestSubject(us.Name, api.OpReplicateKey), regions[1].Name)
	fmt.Fprintf(stdout, "  mrkrepl key create --server %s --region %s %s\n", us.URL, us.Name, creds)
	fmt.Fprintf(stdout, "  mrkrepl key replicate <key id> --to %s --wait --server %s --region %s %s\n", regions[1].Name, us.URL, us.Name, creds)
	fmt.Fprintf(stdout, "  mrkrepl key rotate <key id> --wait --server %s --region %s %s\n", us.URL, us.Name, creds)
	fmt.Fprintf(stdout, "  mrkrepl key update-primary <key id> %s --wait --server %s --region %s %s\n", regions[1].Name, us.URL, us.Name, creds)
	fmt.Fprintf(stdout, "  mrkrepl key describe <key id> --server %s --region %s %s\n", regions[1].URL, regions[1].Name, creds)
	fmt.Fprintf(stdout, "  mrkrepl key policy get <key id> --server %s --region %s %s\n", us.URL, us.Name, creds)
	fmt.Fprintf(stdout, "  mrkrepl events --follow --server %s --region %s --nats-user %s --nats-password-file %s   (the admin: stored events need the JetStream API)\n", us.URL, us.Name, natsauth.UserAdmin, adminFile)
	if err := demoKMS(ctx, stdout, p, dir); err != nil {
		return err
	}
	<-ctx.Done()
	fmt.Fprintln(stdout, "stopping")
	return nil
}

// demoReady is ready when every worker and the proxy are.
func demoReady(p *mrkrepltest.Partition) obs.ReadyFunc {
	return func(ctx context.Context) error {
		for _, r := range p.Regions() {
			if r.Worker == nil {
				return fmt.Errorf("worker %s: not running", r.Name)
			}
			if err := r.Worker.Ready(ctx); err != nil {
				return fmt.Errorf("worker %s: %w", r.Name, err)
			}
		}
		if p.Proxy == nil {
			return errors.New("proxy: not running")
		}
		if err := p.Proxy.Ready(ctx); err != nil {
			return fmt.Errorf("proxy: %w", err)
		}
		return nil
	}
}

// demoScenario creates a key in the first region, replicates it to the
// others and checks that ciphertext made anywhere decrypts everywhere; then
// it rotates the key, encrypts with the new version everywhere, hands the
// key over to the second region, and checks that every ciphertext made
// before and after decrypts in every region.
func demoScenario(ctx context.Context, out io.Writer, regions []*mrkrepltest.Region) error {
	primary := regions[0]
	key, err := primary.Client.CreateKey(ctx, api.CreateKeyRequest{Description: "demo key"})
	if err != nil {
		return fmt.Errorf("create key in %s: %w", primary.Name, err)
	}
	fmt.Fprintf(out, "created %s in %s\n", key.KeyID, primary.Name)
	for _, r := range regions[1:] {
		start := time.Now()
		rep, err := primary.Client.ReplicateKey(ctx, key.KeyID, r.Name)
		if err != nil {
			return fmt.Errorf("replicate to %s: %w", r.Name, err)
		}
		rep, err = primary.Client.WaitReplication(ctx, rep.ReplicationID)
		if err != nil {
			return fmt.Errorf("replicate to %s: %w", r.Name, err)
		}
		if rep.State != api.StateCompleted {
			return fmt.Errorf("replication to %s ended %s: %s", r.Name, rep.State, rep.Reason)
		}
		fmt.Fprintf(out, "replicated to %-15s in %6s (replication %s, key confirmation matched)\n", r.Name, time.Since(start).Round(time.Millisecond), rep.ReplicationID[:12])
	}
	var cts []demoCiphertext
	for _, from := range regions {
		ct, err := demoEncrypt(ctx, key.KeyID, from, 1)
		if err != nil {
			return err
		}
		cts = append(cts, ct)
		ok, err := demoDecrypt(ctx, ct, regions)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "encrypted in %-15s → decrypted in %s\n", from.Name, strings.Join(ok, ", "))
	}

	// Rotate: the new version is staged until every replica holds it, then
	// current everywhere.
	start := time.Now()
	rotated, err := primary.Client.RotateKey(ctx, key.KeyID)
	if err != nil {
		return fmt.Errorf("rotate in %s: %w", primary.Name, err)
	}
	version := newestVersion(rotated)
	if version != 2 {
		return fmt.Errorf("rotate in %s: made version %d, want 2", primary.Name, version)
	}
	for _, r := range regions {
		if _, err := r.Client.WaitKey(ctx, key.KeyID, client.VersionActive(version)); err != nil {
			return fmt.Errorf("rotate: version %d not current in %s: %w", version, r.Name, err)
		}
	}
	fmt.Fprintf(out, "rotated to version %d          in %6s (staged until every replica held it; now current in %s)\n", version, time.Since(start).Round(time.Millisecond), demoNames(regions))
	for _, from := range regions {
		ct, err := demoEncrypt(ctx, key.KeyID, from, version)
		if err != nil {
			return err
		}
		cts = append(cts, ct)
	}
	fmt.Fprintf(out, "encrypted with version %d in %s\n", version, demoNames(regions))

	// Hand the key over to the second region.
	next := regions[1]
	start = time.Now()
	if _, err := primary.Client.UpdatePrimaryRegion(ctx, key.KeyID, next.Name); err != nil {
		return fmt.Errorf("update primary region to %s: %w", next.Name, err)
	}
	for _, r := range regions {
		k, err := r.Client.WaitKey(ctx, key.KeyID, client.PrimaryIs(next.Name))
		if err != nil {
			return fmt.Errorf("update primary region to %s: not done in %s: %w", next.Name, r.Name, err)
		}
		if want := demoRole(r, next); k.Role != want {
			return fmt.Errorf("update primary region to %s: the key is %s in %s, want %s", next.Name, k.Role, r.Name, want)
		}
	}
	fmt.Fprintf(out, "primary moved to %-12s in %6s (signed hand-over; every region names it, none UPDATING)\n", next.Name, time.Since(start).Round(time.Millisecond))

	// Every ciphertext, of either version and from any region, decrypts in
	// every region.
	for _, v := range []uint32{1, version} {
		var from []string
		for _, ct := range cts {
			if ct.version != v {
				continue
			}
			if _, err := demoDecrypt(ctx, ct, regions); err != nil {
				return err
			}
			from = append(from, ct.region)
		}
		fmt.Fprintf(out, "version %d ciphertexts from %s → decrypted in %s\n", v, strings.Join(from, ", "), demoNames(regions))
	}
	return nil
}

// demoIntruder is an application account the demo's key policies do not
// name: its request is refused.
var demoIntruder = natsauth.App{Account: "APP_OTHER", Users: []string{"intruder"}}

// demoRefusal shows that a principal the key's policy does not name cannot
// use the key: another application's decrypt is refused (403) and recorded
// as an AccessDenied event naming it, while the key's creator decrypts.
func demoRefusal(ctx context.Context, out io.Writer, p *mrkrepltest.Partition) error {
	us := p.Regions()[0]
	nc, err := p.ConnectApp(us.Name, demoIntruder.Account, demoIntruder.Users[0])
	if err != nil {
		return err
	}
	defer nc.Close()
	intruder := client.New(nc, us.Name)
	keys, err := us.Client.ListKeys(ctx)
	if err != nil || len(keys) == 0 {
		return fmt.Errorf("list keys in %s: %v", us.Name, err)
	}
	ct, err := demoEncrypt(ctx, keys[0], us, 0)
	if err != nil {
		return err
	}
	principal := demoIntruder.Account + "/" + demoIntruder.Users[0]
	admin, err := p.Connect(us.Name, "demo-events")
	if err != nil {
		return err
	}
	defer admin.Close()
	events, err := admin.SubscribeSync(layout.EventSubject(us.Name, api.EventAccessDenied))
	if err != nil {
		return err
	}
	if err := admin.Flush(); err != nil {
		return err
	}
	_, err = intruder.DecryptWithContext(ctx, "", ct.blob, ct.context)
	if !client.IsForbidden(err) {
		return fmt.Errorf("decrypt as %s, whom the key's policy does not name: want 403, got %v", principal, err)
	}
	m, err := events.NextMsgWithContext(ctx)
	if err != nil {
		return fmt.Errorf("no AccessDenied event for the refused decrypt: %w", err)
	}
	var ev api.Event
	if err := json.Unmarshal(m.Data, &ev); err != nil || ev.Actor != principal || ev.Action != "kms:Decrypt" || ev.KeyID != keys[0] {
		return fmt.Errorf("AccessDenied event %s does not name %s, kms:Decrypt and the key", m.Data, principal)
	}
	fmt.Fprintf(out, "refused %s: decrypt in %s (403, not in the key's policy; an AccessDenied event names it)\n", principal, us.Name)
	return nil
}

// demoCiphertext is a ciphertext the demo made, with what it must decrypt to.
type demoCiphertext struct {
	region    string
	version   uint32
	plaintext string
	context   map[string]string // the encryption context
	blob      []byte
}

// demoEncrypt encrypts in region from, with an encryption context, and
// checks the version used (0: any).
func demoEncrypt(ctx context.Context, keyID string, from *mrkrepltest.Region, version uint32) (demoCiphertext, error) {
	ct := demoCiphertext{region: from.Name, version: version,
		plaintext: fmt.Sprintf("hello from %s, version %d", from.Name, version),
		context:   map[string]string{"demo": from.Name}}
	r, err := from.Client.EncryptWithContext(ctx, keyID, []byte(ct.plaintext), ct.context)
	if err != nil {
		return ct, fmt.Errorf("encrypt in %s: %w", from.Name, err)
	}
	if version != 0 && r.Version != version {
		return ct, fmt.Errorf("encrypt in %s: used version %d, want %d", from.Name, r.Version, version)
	}
	ct.version = r.Version
	ct.blob = r.CiphertextBlob
	return ct, nil
}

// demoDecrypt decrypts ct in every region and returns their names.
func demoDecrypt(ctx context.Context, ct demoCiphertext, regions []*mrkrepltest.Region) ([]string, error) {
	var ok []string
	for _, to := range regions {
		got, err := to.Client.DecryptWithContext(ctx, "", ct.blob, ct.context)
		if err != nil {
			return nil, fmt.Errorf("decrypt in %s of the version %d ciphertext made in %s: %w", to.Name, ct.version, ct.region, err)
		}
		if string(got.Plaintext) != ct.plaintext || got.Version != ct.version {
			return nil, fmt.Errorf("decrypt in %s of the version %d ciphertext made in %s: got version %d and another plaintext", to.Name, ct.version, ct.region, got.Version)
		}
		ok = append(ok, to.Name)
	}
	return ok, nil
}

// demoRole is the key's role in r once primary is its primary region.
func demoRole(r, primary *mrkrepltest.Region) string {
	if r == primary {
		return api.RolePrimary
	}
	return api.RoleReplica
}

func demoNames(regions []*mrkrepltest.Region) string {
	var names []string
	for _, r := range regions {
		names = append(names, r.Name)
	}
	return strings.Join(names, ", ")
}

func validDemoHSM(mode string) bool {
	return mode == "soft" || mode == "softhsm" || mode == "mixed"
}

// demoHSM returns the HSM URI for each region of the demo. With keep (the
// demo's --data), a soft HSM is persisted in dir/<region>/hsm, beside the
// region's JetStream data, so that the next demo on dir finds its keys and
// its RSK (the bundle is built from the RSKs); otherwise it is in memory.
func demoHSM(mode, dir string, keep bool) (func(string) string, hsmsvc.Options, error) {
	soft := func(region string) string {
		if !keep {
			return "soft:"
		}
		return "soft:" + filepath.Join(dir, region, "hsm")
	}
	switch mode {
	case "soft":
		return soft, hsmsvc.Options{}, nil
	case "softhsm", "mixed":
		return softhsmDemo(mode, dir, soft)
	}
	return nil, hsmsvc.Options{}, errors.New(`--hsm: want soft, softhsm or mixed`)
}
