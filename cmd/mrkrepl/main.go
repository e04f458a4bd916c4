// Command mrkrepl runs and operates mrkrepl, the replication service for
// multi-Region keys.
//
//	mrkrepl demo       the whole partition in one process (embedded NATS, soft HSMs)
//	mrkrepl worker     a region's HSM worker against the region's NATS cluster
//	mrkrepl proxy      the bridge between the regions' NATS clusters
//	mrkrepl inspect    decode (and optionally verify) a protocol message
//	mrkrepl rsk        print a region's RSK as a trust-bundle fragment; rsk create: a new one (rotation)
//	mrkrepl bundle     merge fragments into the partition's trust bundle; add, retire, remove, list keys
//	mrkrepl hsm init   create the region's RSK inside a PKCS#11 token
//	mrkrepl nats-config  print the accounts block of a region's nats-server configuration
//	mrkrepl key        create, describe, replicate keys; encrypt and decrypt (the request API)
//	mrkrepl events     show a region's audit events, or follow them
//	mrkrepl access-key issue, list, delete access keys of a region's KMS API
//
// Run "mrkrepl <command> -h" for a command's flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/mrkrepl/mrkrepl/internal/bench"
	"github.com/mrkrepl/mrkrepl/internal/procs"
)

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands = []command{
	{"demo", "run a whole partition in one process: replicate, rotate and move a key across it", runDemo},
	{"worker", "run a region's HSM worker", runWorker},
	{"proxy", "run the bridge between regions", runProxy},
	{"inspect", "decode and optionally verify a protocol message", runInspect},
	{"rsk", "print a region's RSK as a trust-bundle fragment (rsk create: make a new one)", runRSK},
	{"bundle", "merge trust-bundle fragments; add, retire, remove, list a bundle's keys", runBundle},
	{"hsm", "hsm init: create the region's RSK inside a PKCS#11 token", runHSM},
	{"nats-config", "print the accounts block of a region's nats-server configuration", runNATSConfig},
	{"bench", "measure replication throughput, latency and cost against the crypto bound", runBench},
	{"key", "create, replicate, rotate, move and delete keys; encrypt, decrypt, generate data keys", runKey},
	{"events", "show a region's audit events (--follow to keep following)", runEvents},
	{"access-key", "issue, list and delete access keys of a region's KMS API (AWS SigV4)", runAccessKey},
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: mrkrepl <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "mrkrepl replicates multi-Region keys between the HSMs of a partition's regions.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-11s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, `Run "mrkrepl <command> -h" for a command's flags.`)
}

func main() {
	// "mrkrepl bench --separate-servers" starts this executable again as
	// each region's nats-server: such a process serves and never returns.
	bench.ServeNATSIfChild()
	// Two Ps per core unless GOMAXPROCS is set: short NATS steps then do
	// not wait behind P-384 operations (internal/procs).
	procs.Oversubscribe()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// errUsage marks an error already explained by a usage message.
var errUsage = errors.New("usage")

// run executes one command; daemons run until ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdout, stderr)
		switch {
		case err == nil, errors.Is(err, flag.ErrHelp):
			return 0
		case errors.Is(err, errUsage):
			return 2
		default:
			fmt.Fprintf(stderr, "mrkrepl %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "mrkrepl: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

// newFlagSet returns a flag set whose errors are returned, not fatal.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("mrkrepl "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: mrkrepl %s %s\n\nflags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args and rejects positional arguments unless allowed.
func parseFlags(fs *flag.FlagSet, args []string, allowArgs bool) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if !allowArgs && fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	return nil
}

// logFlags adds --log-level and --log-format and returns a constructor.
func logFlags(fs *flag.FlagSet, defLevel string) func(w io.Writer) (*slog.Logger, error) {
	level := fs.String("log-level", defLevel, "log level: debug, info, warn or error")
	format := fs.String("log-format", "text", "log format: text or json")
	return func(w io.Writer) (*slog.Logger, error) {
		var l slog.Level
		if err := l.UnmarshalText([]byte(*level)); err != nil {
			return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", *level)
		}
		o := &slog.HandlerOptions{Level: l}
		switch strings.ToLower(*format) {
		case "text":
			return slog.New(slog.NewTextHandler(w, o)), nil
		case "json":
			return slog.New(slog.NewJSONHandler(w, o)), nil
		}
		return nil, fmt.Errorf("--log-format %q: want text or json", *format)
	}
}
