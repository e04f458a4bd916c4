package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/internal/obs"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/mrkrepl/mrkrepl/proxy"
	"github.com/mrkrepl/mrkrepl/workers"
	"github.com/nats-io/nats.go"
)

// natsFlags are the connection flags shared by worker and proxy.
type natsFlags struct {
	creds string
	ca    string
}

func (n *natsFlags) add(fs *flag.FlagSet) {
	fs.StringVar(&n.creds, "nats-creds", "", "NATS credentials `FILE` (user JWT and seed)")
	fs.StringVar(&n.ca, "nats-ca", "", "CA certificate `FILE` for TLS to NATS")
}

func (n *natsFlags) connect(url, name string) (*nats.Conn, error) {
	opts := []nats.Option{nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(time.Second)}
	if n.creds != "" {
		opts = append(opts, nats.UserCredentials(n.creds))
	}
	if n.ca != "" {
		opts = append(opts, nats.RootCAs(n.ca))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", url, err)
	}
	return nc, nil
}

func runWorker(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("worker", "--region NAME --bundle FILE --hsm URI [flags]", stderr)
	region := fs.String("region", "", "this worker's `region` (required)")
	url := fs.String("nats-url", "nats://127.0.0.1:4222", "the region's NATS cluster `URL`s (comma-separated)")
	bundlePath := fs.String("bundle", "", "the partition's trust bundle `FILE` (JSON, required)")
	hsmURI := fs.String("hsm", "", "HSM `URI`: soft:/dir or pkcs11:token=…?module-path=…&pin-source=FILE (required)")
	pinFile := fs.String("pin-file", "", "read the PKCS#11 PIN from `FILE` (never pass a PIN on the command line)")
	allowHostKDF := fs.Bool("allow-host-kdf", false, "allow a PKCS#11 token that cannot run the KDF inside (SoftHSM2) to release Z to the host (docs/PKCS11.md)")
	replicas := fs.Int("replicas", 1, "JetStream replicas for the region's streams and buckets (1 or 3)")
	concurrency := fs.Int("concurrency", 16, "messages handled at once per consumer")
	metricsAddr := fs.String("metrics-addr", "", "serve /metrics, /healthz and /readyz on `ADDR` (e.g. 127.0.0.1:9101)")
	var nf natsFlags
	nf.add(fs)
	newLogger := logFlags(fs, "info")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if err := required(fs, "region", *region, "bundle", *bundlePath, "hsm", *hsmURI); err != nil {
		return err
	}
	if *replicas != 1 && *replicas != 3 {
		return errors.New("--replicas: want 1 or 3")
	}
	logger, err := newLogger(stderr)
	if err != nil {
		return err
	}
	bundle, err := messages.LoadBundle(*bundlePath)
	if err != nil {
		return err
	}
	hopts := hsmsvc.Options{AllowHostKDF: *allowHostKDF, Logger: logger}
	if *pinFile != "" {
		pin, err := readSecretFile(*pinFile)
		if err != nil {
			return fmt.Errorf("--pin-file: %w", err)
		}
		hopts.PIN = pin
	}
	hsm, err := hsmsvc.Open(ctx, *hsmURI, hopts)
	if err != nil {
		return err
	}
	defer hsm.Close()
	nc, err := nf.connect(*url, "mrkrepl-worker-"+*region)
	if err != nil {
		return err
	}
	defer nc.Close()
	reg := obs.NewRegistry()
	w, err := workers.New(workers.Config{
		Region: *region, Bundle: bundle, HSM: hsm, Conn: nc, Logger: logger, Registerer: reg,
		Layout: layout.Options{Replicas: *replicas}, Concurrency: *concurrency,
	})
	if err != nil {
		return err
	}
	if err := w.Start(ctx); err != nil {
		return err
	}
	defer w.Stop()
	if *metricsAddr != "" {
		addr, err := obs.Serve(ctx, *metricsAddr, reg, func() error {
			if !nc.IsConnected() {
				return errors.New("not connected to nats")
			}
			return nil
		}, logger)
		if err != nil {
			return err
		}
		logger.Info("metrics", "url", "http://"+addr+"/metrics")
	}
	<-ctx.Done()
	logger.Info("worker stopping")
	return nil
}

// regionURLs collects repeated --region NAME=URL flags.
type regionURLs map[string]string

func (r regionURLs) String() string { return fmt.Sprint(map[string]string(r)) }
func (r regionURLs) Set(v string) error {
	name, url, ok := strings.Cut(v, "=")
	if !ok || name == "" || url == "" {
		return fmt.Errorf("want NAME=URL, got %q", v)
	}
	if _, dup := r[name]; dup {
		return fmt.Errorf("region %s given twice", name)
	}
	r[name] = url
	return nil
}

func runProxy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("proxy", "--bundle FILE --region NAME=URL ... [flags]", stderr)
	bundlePath := fs.String("bundle", "", "the partition's trust bundle `FILE` (JSON, required)")
	urls := regionURLs{}
	fs.Var(urls, "region", "a region's NATS `NAME=URL`; repeat for every region of the partition")
	durable := fs.String("durable", "proxy", "consumer name prefix; proxies with the same prefix share the work")
	delay := fs.Duration("delay", 0, "injected one-way delay for every pair (WAN emulation; tests and benchmarks only)")
	metricsAddr := fs.String("metrics-addr", "", "serve /metrics, /healthz and /readyz on `ADDR`")
	var nf natsFlags
	nf.add(fs)
	newLogger := logFlags(fs, "info")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if err := required(fs, "bundle", *bundlePath); err != nil {
		return err
	}
	logger, err := newLogger(stderr)
	if err != nil {
		return err
	}
	bundle, err := messages.LoadBundle(*bundlePath)
	if err != nil {
		return err
	}
	conns := map[string]*nats.Conn{}
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	for _, r := range bundle.Regions() {
		url, ok := urls[r]
		if !ok {
			return fmt.Errorf("no --region %s=URL: the bundle's partition has regions %s", r, strings.Join(bundle.Regions(), ", "))
		}
		if conns[r], err = nf.connect(url, "mrkrepl-proxy-"+r); err != nil {
			return err
		}
	}
	reg := obs.NewRegistry()
	p, err := proxy.New(proxy.Config{
		Bundle: bundle, Conns: conns, Logger: logger, Registerer: reg, Durable: *durable,
		Delay: map[string]time.Duration{"*": *delay},
	})
	if err != nil {
		return err
	}
	if err := p.Start(ctx); err != nil {
		return err
	}
	defer p.Stop()
	if *metricsAddr != "" {
		addr, err := obs.Serve(ctx, *metricsAddr, reg, func() error {
			for r, nc := range conns {
				if !nc.IsConnected() {
					return fmt.Errorf("not connected to %s", r)
				}
			}
			return nil
		}, logger)
		if err != nil {
			return err
		}
		logger.Info("metrics", "url", "http://"+addr+"/metrics")
	}
	<-ctx.Done()
	logger.Info("proxy stopping")
	return nil
}

// required checks that each flag named in pairs ("name", value, …) is set.
func required(fs *flag.FlagSet, pairs ...string) error {
	for i := 0; i+1 < len(pairs); i += 2 {
		if name, v := pairs[i], pairs[i+1]; v == "" {
			fmt.Fprintf(fs.Output(), "--%s is required\n", name)
			fs.Usage()
			return errUsage
		}
	}
	return nil
}

// readSecretFile reads a PIN or password from a file, without the trailing newline.
func readSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return s, nil
}
