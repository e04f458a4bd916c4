package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/config"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/nats-io/nats.go"
)

// The client commands, "mrkrepl key" and "mrkrepl events", talk to one
// region's NATS cluster as users of its request API (docs/API.md): key
// calls the API's operations through package client, events reads the
// region's audit stream. Both share clientFlags: --server, --region,
// --output, --timeout and the NATS credentials, each also settable by an
// environment variable (MRKREPL_SERVER, MRKREPL_REGION, …; a flag wins).
// Secrets come from files only: a password on the command line or in a
// URL is refused.

// clientFlags are the connection and output flags of the client commands.
type clientFlags struct {
	server  string
	region  string
	output  outputFormat
	timeout time.Duration
	nats    config.NATS // credentials and TLS; the URL is server
}

// clientEnvFlags are the flags also read from MRKREPL_<FLAG>. The
// commands' own flags (--plaintext, --to, …) are not: a variable left
// in the environment should not change what a command does to a key.
var clientEnvFlags = []string{"server", "region", "output", "timeout",
	"nats-creds", "nats-user", "nats-password-file", "nats-ca", "nats-cert", "nats-key"}

func (c *clientFlags) bind(fs *flag.FlagSet) {
	c.server, c.output, c.timeout = "nats://127.0.0.1:4222", outputTable, 10*time.Second
	fs.StringVar(&c.server, "server", c.server, "the region's NATS server `URL`s, comma-separated")
	fs.StringVar(&c.region, "region", "", "the `region` to talk to (required)")
	fs.Var(&c.output, "output", "output `format`: table or json")
	fs.DurationVar(&c.timeout, "timeout", c.timeout, "bound on each call to the region")
	addNATSFlags(fs, &c.nats)
}

// parse applies the environment, then parses args (flags may come before
// or after the positional arguments), then checks the shared flags and
// that the positional arguments are exactly names.
func (c *clientFlags) parse(fs *flag.FlagSet, args []string, names ...string) ([]string, error) {
	for _, name := range clientEnvFlags {
		env := config.EnvName(name)
		if v, ok := os.LookupEnv(env); ok && v != "" {
			if err := fs.Set(name, v); err != nil {
				return nil, usageError(fs, "%s=%q: %v", env, v, err)
			}
		}
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return nil, err
	}
	if problems := c.check(); len(problems) > 0 {
		return nil, usageError(fs, "%s", strings.Join(problems, "\n"))
	}
	switch {
	case len(pos) < len(names):
		return nil, usageError(fs, "missing %s", names[len(pos)])
	case len(pos) > len(names):
		return nil, usageError(fs, "unexpected argument %q", pos[len(names)])
	}
	return pos, nil
}

// check returns every problem with the shared flags.
func (c *clientFlags) check() []string {
	var p []string
	switch {
	case c.region == "":
		p = append(p, "--region is required (or MRKREPL_REGION)")
	case !messages.IsName(c.region):
		p = append(p, fmt.Sprintf("--region %q: not a region name (lowercase letters, digits and '-')", c.region))
	}
	for s := range strings.SplitSeq(c.server, ",") {
		s = strings.TrimSpace(s)
		u, err := url.Parse(s)
		switch {
		case err != nil || u.Host == "":
			p = append(p, fmt.Sprintf("--server %q: want a URL such as nats://host:4222", s))
		case u.User != nil:
			p = append(p, "--server: credentials in a URL are refused (they show in process listings); use --nats-creds or --nats-user with --nats-password-file")
		case u.Scheme != "nats" && u.Scheme != "tls" && u.Scheme != "ws" && u.Scheme != "wss":
			p = append(p, fmt.Sprintf("--server %q: scheme %q, want nats, tls, ws or wss", s, u.Scheme))
		}
	}
	n := c.nats
	switch {
	case (n.User == "") != (n.PasswordFile == ""):
		p = append(p, "--nats-user and --nats-password-file go together")
	case n.User != "" && n.CredsFile != "":
		p = append(p, "give either --nats-creds or --nats-user with --nats-password-file, not both")
	}
	if (n.CertFile == "") != (n.KeyFile == "") {
		p = append(p, "--nats-cert and --nats-key go together")
	}
	if c.timeout <= 0 {
		p = append(p, fmt.Sprintf("--timeout %s: want more than 0", c.timeout))
	}
	return p
}

// usageError prints a problem and the usage, and returns errUsage.
func usageError(fs *flag.FlagSet, format string, args ...any) error {
	fmt.Fprintf(fs.Output(), format+"\n", args...)
	fs.Usage()
	return errUsage
}

// parseInterspersed parses flags wherever they are among the positional
// arguments, as "mrkrepl key describe KEY_ID --output json" needs; after
// "--" everything is positional.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, errUsage
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// clientConn is a connection of a client command. A permissions violation
// is asynchronous in NATS (the server drops the message and says so on the
// side): clientConn records it and cuts the calls in flight short, so that
// the command reports it at once instead of timing out.
type clientConn struct {
	nc      *nats.Conn
	timeout time.Duration
	// denied ends, with the violation as its cause, at the first
	// permissions violation.
	denied context.Context
}

// connect connects to c.server, failing at once if no server answers.
func (c *clientFlags) connect(name string) (*clientConn, error) {
	denied, deny := context.WithCancelCause(context.Background())
	cc := &clientConn{timeout: c.timeout, denied: denied}
	opts := []nats.Option{
		nats.Name("mrkrepl-" + name),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrPermissionViolation) {
				deny(err) // only the first cause is kept
			}
		}),
	}
	n := c.nats
	if n.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(n.CredsFile))
	}
	if n.User != "" {
		pw, err := readSecretFile(n.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("--nats-password-file: %w", err)
		}
		opts = append(opts, nats.UserInfo(n.User, pw))
	}
	if n.CAFile != "" {
		opts = append(opts, nats.RootCAs(n.CAFile))
	}
	if n.CertFile != "" {
		opts = append(opts, nats.ClientCert(n.CertFile, n.KeyFile))
	}
	nc, err := nats.Connect(c.server, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", c.server, err)
	}
	cc.nc = nc
	return cc, nil
}

// call returns a context for one call: bounded by --timeout, and cancelled
// by a permissions violation.
func (cc *clientConn) call(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(ctx, cc.timeout)
	stop := context.AfterFunc(cc.denied, cancel)
	return ctx, func() { stop(); cancel() }
}

// explain replaces the error of a call cut short by a permissions
// violation (or by --timeout) with what happened.
func (cc *clientConn) explain(parent context.Context, err error) error {
	if err == nil || parent.Err() != nil {
		return err
	}
	if denied := cc.deniedErr(); denied != nil {
		return fmt.Errorf("%v (is this NATS user allowed to do this? docs/NATS.md)", denied)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: no answer within --timeout %s", err, cc.timeout)
	}
	return err
}

// deniedErr returns the first permissions violation, or nil.
func (cc *clientConn) deniedErr() error {
	if cc.denied.Err() == nil {
		return nil
	}
	return context.Cause(cc.denied)
}

func (cc *clientConn) close() { cc.nc.Close() }
