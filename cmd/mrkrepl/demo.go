package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/internal/obs"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", "[flags]", stderr)
	data := fs.String("data", "", "keep JetStream data and HSM state in `DIR` (default: a temporary directory, removed at exit)")
	serve := fs.Bool("serve", false, "after the demo, keep the partition running and print how to reach it, until interrupted")
	hsmMode := fs.String("hsm", "soft", "HSM backend per region: soft, softhsm (a throwaway SoftHSM2 token per region) or mixed (regions alternate)")
	delay := fs.Duration("delay", 0, "injected one-way delay between regions (WAN emulation), e.g. 50ms")
	timeout := fs.Duration("timeout", time.Minute, "give up if the demo's replications take longer than this")
	newLogger := logFlags(fs, "warn")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	logger, err := newLogger(stderr)
	if err != nil {
		return err
	}
	dir := *data
	if dir == "" {
		if dir, err = os.MkdirTemp("", "mrkrepl-demo-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	hsmFor, hsmOpts, err := demoHSM(*hsmMode, dir)
	if err != nil {
		return err
	}
	hsmOpts.Logger = logger

	start := time.Now()
	// One registry for the whole demo, each component's series labelled
	// instance="worker-<region>" or "proxy"; served with --serve.
	reg := obs.NewRegistry()
	p, err := mrkrepltest.Start(ctx, mrkrepltest.Options{
		Partition: "demo", Dir: dir, HSM: hsmFor, HSMOptions: hsmOpts,
		Logger: logger, ProxyDelay: *delay, Registerer: reg,
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
	fmt.Fprintf(stdout, "\ntry:\n  nats --server %s req %s '{}'\n", us.URL, layout.APISubject(us.Name, api.OpCreateKey))
	fmt.Fprintf(stdout, "  nats --server %s pub %s '{\"key_id\":\"<key id>\",\"replica_region\":\"%s\"}'\n", us.URL, layout.RequestSubject(us.Name, api.OpReplicateKey), regions[1].Name)
	fmt.Fprintf(stdout, "  mrkrepl key create --server %s --region %s\n", us.URL, us.Name)
	fmt.Fprintf(stdout, "  mrkrepl key replicate <key id> --to %s --wait --server %s --region %s\n", regions[1].Name, us.URL, us.Name)
	fmt.Fprintf(stdout, "  mrkrepl events --follow --server %s --region %s\n", us.URL, us.Name)
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
// others and checks that ciphertext made anywhere decrypts everywhere.
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
	for _, from := range regions {
		pt := fmt.Sprintf("hello from %s", from.Name)
		aad := []byte("demo=" + from.Name)
		ct, err := from.Client.Encrypt(ctx, key.KeyID, []byte(pt), aad)
		if err != nil {
			return fmt.Errorf("encrypt in %s: %w", from.Name, err)
		}
		var ok []string
		for _, to := range regions {
			got, err := to.Client.Decrypt(ctx, ct.CiphertextBlob, aad)
			if err != nil {
				return fmt.Errorf("decrypt in %s of ciphertext made in %s: %w", to.Name, from.Name, err)
			}
			if string(got.Plaintext) != pt {
				return fmt.Errorf("decrypt in %s of ciphertext made in %s: plaintext differs", to.Name, from.Name)
			}
			ok = append(ok, to.Name)
		}
		fmt.Fprintf(out, "encrypted in %-15s → decrypted in %s\n", from.Name, strings.Join(ok, ", "))
	}
	return nil
}

// demoHSM returns the HSM URI for each region of the demo.
func demoHSM(mode, dir string) (func(string) string, hsmsvc.Options, error) {
	switch mode {
	case "soft":
		return func(string) string { return "soft:" }, hsmsvc.Options{}, nil
	case "softhsm", "mixed":
		return softhsmDemo(mode, dir)
	}
	return nil, hsmsvc.Options{}, errors.New(`--hsm: want soft, softhsm or mixed`)
}
