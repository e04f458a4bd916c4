package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
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

// keyCmd is one run of "mrkrepl key <subcommand>".
type keyCmd struct {
	flags          clientFlags
	stdout, stderr io.Writer
	conn           *clientConn
	c              *client.Client
}

type keySub struct {
	name, synopsis, summary string
	run                     func(ctx context.Context, k *keyCmd, fs *flag.FlagSet, args []string) error
}

var keySubs = []keySub{
	{"create", "[--description TEXT] [flags]", "create a multi-Region primary key in --region", keyCreate},
	{"describe", "KEY_ID [flags]", "show a key as --region sees it: role, state, versions and where each is, replicas", keyDescribe},
	{"list", "[flags]", "list the ids of the keys --region holds", keyList},
	{"replicate", "KEY_ID --to REGION [--wait] [flags]", "copy a key from its primary region (--region) to another", keyReplicate},
	{"replication", "REPLICATION_ID [flags]", "show a replication run as --region sees it", keyReplication},
	{"rotate", "KEY_ID [--wait] [flags]", "make a new version of the key at its primary (--region), used once every replica has it", keyRotate},
	{"update-primary", "KEY_ID REGION [--wait] [flags]", "hand the key over from its primary (--region) to its replica in REGION", keyUpdatePrimary},
	{"schedule-deletion", "KEY_ID [--days N] [flags]", "schedule the deletion of the key in --region after a waiting period", keyScheduleDeletion},
	{"cancel-deletion", "KEY_ID [flags]", "cancel the key's scheduled deletion in --region", keyCancelDeletion},
	{"wait", "KEY_ID CONDITION... [--wait-timeout D] [flags]", "wait until the key in --region meets every condition given", keyWait},
	{"encrypt", "KEY_ID (--plaintext TEXT | --in FILE|-) [--context K=V]... [flags]", "encrypt with the key's current version", keyEncrypt},
	{"decrypt", "(--in FILE|- | --ciphertext BASE64) [--context K=V]... [--key-id KEY_ID] [flags]", "decrypt a blob made in any region that holds the key", keyDecrypt},
	{"generate-data-key", "KEY_ID [--bytes 32] [--context K=V]... [--out FILE] [--plaintext-out FILE|-] [flags]", "make a data key, in plaintext and encrypted under the key", keyGenerateDataKey},
	{"policy", "get|put KEY_ID [--file FILE|-] [flags]", "show or replace the key's policy in --region (docs/AUTHZ.md)", keyPolicy},
}

func keyUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: mrkrepl key <subcommand> [arguments] --region NAME [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Calls a region's request API (docs/API.md) over NATS.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "subcommands:")
	for _, s := range keySubs {
		fmt.Fprintf(w, "  %-18s %s\n", s.name, s.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Every subcommand takes --server URL (default nats://127.0.0.1:4222), --region NAME,")
	fmt.Fprintln(w, "--output table|json, --timeout and the NATS credentials (--nats-creds FILE, or")
	fmt.Fprintln(w, "--nats-user NAME with --nats-password-file FILE); each can also be set by")
	fmt.Fprintln(w, "MRKREPL_SERVER, MRKREPL_REGION, MRKREPL_OUTPUT, ... (a flag wins). Who you are is")
	fmt.Fprintln(w, "what the NATS server proves of the credentials: your application account and user;")
	fmt.Fprintln(w, "the key's policy decides what you may do (docs/AUTHZ.md), and audit events name you.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "rotate and update-primary start work that ends later, in several regions;")
	fmt.Fprintln(w, "with --wait they show its progress on stderr. The key's life is in docs/LIFECYCLE.md.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, `Run "mrkrepl key <subcommand> -h" for its flags.`)
}

func runKey(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		keyUsage(stderr)
		return errUsage
	}
	if a := args[0]; a == "-h" || a == "-help" || a == "--help" || a == "help" {
		keyUsage(stdout)
		return nil
	}
	i := slices.IndexFunc(keySubs, func(s keySub) bool { return s.name == args[0] })
	if i < 0 {
		fmt.Fprintf(stderr, "mrkrepl key: unknown subcommand %q\n\n", args[0])
		keyUsage(stderr)
		return errUsage
	}
	sub := keySubs[i]
	k := &keyCmd{stdout: stdout, stderr: stderr}
	defer func() {
		if k.conn != nil {
			k.conn.close()
		}
	}()
	fs := newFlagSet("key "+sub.name, sub.synopsis, stderr)
	k.flags.bind(fs)
	err := sub.run(ctx, k, fs, args[1:])
	if err == nil || errors.Is(err, errUsage) || errors.Is(err, flag.ErrHelp) {
		return err
	}
	// An API error reads "<what is wrong> (<code>)"; anything else keeps
	// its own words.
	var apiErr *client.Error
	if errors.As(err, &apiErr) {
		return fmt.Errorf("%s: %s (%s)", sub.name, apiErr.Description, apiErr.Code)
	}
	return fmt.Errorf("%s: %w", sub.name, err)
}

// connect opens the connection once the flags are checked.
func (k *keyCmd) connect() error {
	conn, err := k.flags.connect("key")
	if err != nil {
		return err
	}
	k.conn, k.c = conn, client.New(conn.nc, k.flags.region)
	return nil
}

// do runs one API call under --timeout.
func do[T any](ctx context.Context, k *keyCmd, f func(ctx context.Context) (T, error)) (T, error) {
	cctx, cancel := k.conn.call(ctx)
	defer cancel()
	v, err := f(cctx)
	return v, k.conn.explain(ctx, err)
}

func keyCreate(ctx context.Context, k *keyCmd, fs *flag.FlagSet, args []string) error {
	desc := fs.String("description", "", "a `text` describing the key (at most 8192 bytes)")
	multi := fs.Bool("multi-region", true, "make a multi-Region key: every mrkrepl key is one, so this is accepted for familiarity (AWS KMS's flag) and cannot be false")
	policyFile := fs.String("policy", "", "the key's policy in --region, a JSON document read from `FILE` (- for stdin; default: the region's admins and you, docs/AUTHZ.md)")
	if _, err := k.flags.parse(fs, args); err != nil {
		return err
	}
	if !*multi {
		return usageError(fs, "--multi-region=false: every mrkrepl key is a multi-Region key")
	}
	policy, err := readPolicy(*policyFile)
	if err != nil {
		return err
	}
	if err := k.connect(); err != nil {
		return err
	}
	key, err := do(ctx, k, func(ctx context.Context) (*api.Key, error) {
		return k.c.CreateKey(ctx, api.CreateKeyRequest{Description: *desc, Policy: policy})
	})
	if err != nil {
		return err
	}
	return k.printKey(key)
}

func keyDescribe(ctx context.Context, k *keyCmd, fs *flag.FlagSet, args []string) error {
	pos, err := k.flags.parse(fs, args, "KEY_ID")
	if err != nil {
		return err
	}
	if err := k.connect(); err != nil {
		return err
	}
	key, err := do(ctx, k, func(ctx context.Context) (*api.Key, error) { return k.c.DescribeKey(ctx, pos[0]) })
	if err != nil {
		return err
	}
	return k.printKey(key)
}

func keyList(ctx context.Context, k *keyCmd, fs *flag.FlagSet, args []string) error {
	if _, err := k.flags.parse(fs, args); err != nil {
		return err
	}
	if err := k.connect(); err != nil {
		return err
	}
	ids, err := do(ctx, k, k.c.ListKeys)
	if err != nil {
		return err
	}
	if k.flags.output == outputJSON {
		return printJSON(k.stdout, api.ListKeysResponse{KeyIDs: append([]string{}, ids...)})
	}
	// One id a line, sorted: for people and for shell loops alike.
	slices.Sort(ids)
	for _, id := range ids {
		fmt.Fprintln(k.stdout, id)
	}
	return nil
}

func keyReplicate(ctx context.Context, k *keyCmd, fs *flag.FlagSet, args []string) error {
	to := fs.String("to", "", "the `region` to copy the key to (required)")
	token := fs.String("client-token", "", "make the request idempotent: repeating it with the same `token` (1 to 64 printable ASCII characters, remembered 24 hours) returns the same run, never a second one")
	wait := fs.Bool("wait", false, "wait until the replica holds every version or has failed, showing each run and change of state on stderr (a key with several versions is copied one version per run, the current one first); exit 1 if it fails or --wait-timeout passes")
	waitTimeout := fs.Duration("wait-timeout", 2*time.Minute, "with --wait: stop waiting after this long (the replication goes on)")
	policyFile := fs.String("policy", "", "the replica's policy in --to, a JSON document read from `FILE` (- for stdin; default: the key's policy in --region)")
	pos, err := k.flags.parse(fs, args, "KEY_ID")
	if err != nil {
		return err
	}
	policy, err := readPolicy(*policyFile)
	if err != nil {
		return err
	}
	switch {
	case *to == "":
		return usageError(fs, "--to is required")
	case !messages.IsName(*to):
		return usageError(fs, "--to %q: not a region name (lowercase letters, digits and '-')", *to)
	case *waitTimeout <= 0:
		return usageError(fs, "--wait-timeout %s: want more than 0", *waitTimeout)
	}
	if err := k.connect(); err != nil {
		return err
	}
	run, err := do(ctx, k, func(ctx context.Context) (*api.Replication, error) {
		return k.c.ReplicateKeyRequest(ctx, api.ReplicateKeyRequest{KeyID: pos[0], ReplicaRegion: *to, ClientToken: *token, Policy: policy})
	})
	if err != nil {
		return err
	}
	if !*wait {
		return k.printReplication(run)
	}
	start := time.Now()
	progress := func(r *api.Replication) {
		line := fmt.Sprintf("%6.2fs  %-13s  replication %s (%s → %s, version %d)", time.Since(start).Seconds(), r.State, r.ReplicationID, k.flags.region, r.Peer, r.Version)
		if r.Reason != "" {
			line += ": " + r.Reason
		}
		fmt.Fprintln(k.stderr, line)
	}
	final, werr := k.waitReplica(ctx, *waitTimeout, run, progress)
	if final != nil && (werr == nil || final.State == api.StateFailed) {
		if err := k.printReplication(final); err != nil {
			return err
		}
	}
	return werr
}

// waitReplica polls a source run until the replica it makes is usable or
// has failed for good. When a run ends it asks the primary about the
// replica: after a COMPLETED run of a key with several versions the
// primary starts the run for the next version, and it replaces a FAILED
// run by a fresh one (up to its attempts limit); waitReplica follows
// either. progress sees every run and change of state.
func (k *keyCmd) waitReplica(ctx context.Context, timeout time.Duration, run *api.Replication, progress func(*api.Replication)) (*api.Replication, error) {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	stillWaiting := func(err error) error {
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("interrupted while replication %s was %s; it goes on (mrkrepl key replication %s --region %s)", run.ReplicationID, run.State, run.ReplicationID, k.flags.region)
		case wctx.Err() != nil:
			return fmt.Errorf("replication %s to %s still %s after %s (--wait-timeout); it goes on (mrkrepl key replication %s --region %s)", run.ReplicationID, run.Peer, run.State, timeout, run.ReplicationID, k.flags.region)
		}
		return err
	}
	progress(run)
	delay := 10 * time.Millisecond
	for {
		switch run.State {
		case api.StateCompleted, api.StateFailed:
			key, err := do(wctx, k, func(ctx context.Context) (*api.Key, error) { return k.c.DescribeKey(ctx, run.KeyID) })
			if err != nil {
				return run, stillWaiting(err)
			}
			decide := afterFailure
			if run.State == api.StateCompleted {
				decide = afterCompletion
			}
			switch outcome, next, reason := decide(run, key); outcome {
			case replicaReady:
				return run, nil
			case gaveUp:
				return run, fmt.Errorf("replication %s to %s FAILED: %s", run.ReplicationID, run.Peer, reason)
			case followRun:
				r, err := do(wctx, k, func(ctx context.Context) (*api.Replication, error) { return k.c.DescribeReplication(ctx, next) })
				if err != nil {
					return run, stillWaiting(err)
				}
				run = r
				progress(run)
				continue
			}
		}
		select {
		case <-wctx.Done():
			return run, stillWaiting(wctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 500*time.Millisecond)
		r, err := do(wctx, k, func(ctx context.Context) (*api.Replication, error) {
			return k.c.DescribeReplication(ctx, run.ReplicationID)
		})
		if err != nil {
			return run, stillWaiting(err)
		}
		if r.State != run.State {
			progress(r)
		}
		run = r
	}
}

// What waiting does after a run has ended FAILED.
type failureOutcome int

const (
	keepPolling  failureOutcome = iota // the primary has not decided yet (or a late receipt is completing the run)
	followRun                          // the primary started another run for the replica
	gaveUp                             // the replica is FAILED: no more runs
	replicaReady                       // the replica holds every version
)

// afterCompletion decides from the primary's record of the replica what to
// do once run has COMPLETED (pure, for tests): a new replica of a key with
// several versions gets one run per version, so the replica may still be
// CREATING, with a later run.
func afterCompletion(run *api.Replication, key *api.Key) (outcome failureOutcome, next, reason string) {
	i := slices.IndexFunc(key.Replicas, func(r api.Replica) bool { return r.Region == run.Peer })
	if i < 0 {
		return replicaReady, "", "" // nothing more to follow (the replica was dropped since)
	}
	r := key.Replicas[i]
	switch {
	case r.ReplicationID != "" && r.ReplicationID != run.ReplicationID:
		return followRun, r.ReplicationID, "" // show the later run, even if it is over already
	case r.State != api.ReplicaCreating && r.State != api.ReplicaFailed:
		return replicaReady, "", ""
	case r.State == api.ReplicaFailed:
		return gaveUp, "", r.Reason
	}
	return keepPolling, "", ""
}

// afterFailure decides from the primary's record of the replica what to do
// once run has ended FAILED (pure, for tests).
func afterFailure(run *api.Replication, key *api.Key) (outcome failureOutcome, next, reason string) {
	i := slices.IndexFunc(key.Replicas, func(r api.Replica) bool { return r.Region == run.Peer })
	if i < 0 {
		return gaveUp, "", run.Reason
	}
	r := key.Replicas[i]
	switch {
	case r.ReplicationID != "" && r.ReplicationID != run.ReplicationID:
		return followRun, r.ReplicationID, ""
	case r.State == api.ReplicaFailed:
		if r.Reason != "" {
			return gaveUp, "", r.Reason
		}
		return gaveUp, "", run.Reason
	}
	return keepPolling, "", ""
}

func keyReplication(ctx context.Context, k *keyCmd, fs *flag.FlagSet, args []string) error {
	pos, err := k.flags.parse(fs, args, "REPLICATION_ID")
	if err != nil {
		return err
	}
	if err := k.connect(); err != nil {
		return err
	}
	run, err := do(ctx, k, func(ctx context.Context) (*api.Replication, error) { return k.c.DescribeReplication(ctx, pos[0]) })
	if err != nil {
		return err
	}
	return k.printReplication(run)
}

func keyEncrypt(ctx context.Context, k *keyCmd, fs *flag.FlagSet, args []string) error {
	text := fs.String("plaintext", "", "the `text` to encrypt (it shows in process listings: prefer --in for secrets)")
	in := fs.String("in", "", "read the plaintext, 1 to 4096 bytes, from `FILE` (- for stdin)")
	ec := contextFlag(fs, "decrypt needs the same pairs")
	aad := fs.String("aad", "", "older raw form of the context: opaque `text` no policy can test (not with --context)")
	out := fs.String("out", "", "write the ciphertext blob, raw, to `FILE` (- for stdout) instead of printing it in base64")
	pos, err := k.flags.parse(fs, args, "KEY_ID")
	if err != nil {
		return err
	}
	set := setFlags(fs)
	switch {
	case set["plaintext"] == set["in"]:
		return usageError(fs, "give one of --plaintext and --in")
	case *out != "" && k.flags.output == outputJSON:
		return usageError(fs, "--out and --output json exclude each other")
	}
	plaintext := []byte(*text)
	if set["in"] {
		if plaintext, err = readInput(*in, api.MaxPlaintext); err != nil {
			if errors.As(err, new(tooLargeError)) {
				return fmt.Errorf("--in %s: %w (for more, encrypt a data key: generate-data-key)", *in, err)
			}
			return fmt.Errorf("--in %s: %w", *in, err)
		}
	}
	if err := k.connect(); err != nil {
		return err
	}
	r, err := do(ctx, k, func(ctx context.Context) (*api.EncryptResponse, error) {
		var r api.EncryptResponse
		return &r, k.c.Call(ctx, api.OpEncrypt, api.EncryptRequest{KeyID: pos[0], Plaintext: plaintext, EncryptionContext: ec.m, AAD: optionalBytes(*aad)}, &r)
	})
	if err != nil {
		return err
	}
	switch {
	case k.flags.output == outputJSON:
		return printJSON(k.stdout, r)
	case *out != "":
		return writeOutput(k.stdout, *out, r.CiphertextBlob, 0o644)
	}
	_, err = fmt.Fprintln(k.stdout, base64.StdEncoding.EncodeToString(r.CiphertextBlob))
	return err
}

func keyDecrypt(ctx context.Context, k *keyCmd, fs *flag.FlagSet, args []string) error {
	in := fs.String("in", "", "read the ciphertext blob from `FILE` (- for stdin), raw or in base64")
	b64 := fs.String("ciphertext", "", "the ciphertext blob in `base64`")
	ec := contextFlag(fs, "the same pairs as given to encrypt")
	aad := fs.String("aad", "", "the raw context `text` given to encrypt (older form)")
	keyID := fs.String("key-id", "", "refuse the blob unless it was made with `KEY_ID`")
	out := fs.String("out", "", "write the plaintext to `FILE` (mode 0600) instead of stdout")
	if _, err := k.flags.parse(fs, args); err != nil {
		return err
	}
	set := setFlags(fs)
	switch {
	case set["in"] == set["ciphertext"]:
		return usageError(fs, "give one of --in and --ciphertext")
	case *out != "" && k.flags.output == outputJSON:
		return usageError(fs, "--out and --output json exclude each other")
	}
	var blob []byte
	var err error
	if set["in"] {
		data, err := readInput(*in, maxBlobInput)
		if err != nil {
			return fmt.Errorf("--in %s: %w", *in, err)
		}
		if blob, err = decodeBlob(data); err != nil {
			return fmt.Errorf("--in %s: %w", *in, err)
		}
	} else if blob, err = base64.StdEncoding.DecodeString(strings.TrimSpace(*b64)); err != nil {
		return usageError(fs, "--ciphertext: not base64: %v", err)
	}
	if err := k.connect(); err != nil {
		return err
	}
	r, err := do(ctx, k, func(ctx context.Context) (*api.DecryptResponse, error) {
		var r api.DecryptResponse
		return &r, k.c.Call(ctx, api.OpDecrypt, api.DecryptRequest{KeyID: *keyID, CiphertextBlob: blob, EncryptionContext: ec.m, AAD: optionalBytes(*aad)}, &r)
	})
	if err != nil {
		return err
	}
	switch {
	case k.flags.output == outputJSON:
		return printJSON(k.stdout, r)
	case *out != "":
		return writeOutput(k.stdout, *out, r.Plaintext, 0o600)
	}
	// The plaintext as it is: decrypt > file gives the bytes that were
	// encrypted. Only a terminal gets a final newline, for the prompt.
	if _, err := k.stdout.Write(r.Plaintext); err != nil {
		return err
	}
	if isTerminal(k.stdout) && !bytes.HasSuffix(r.Plaintext, []byte("\n")) {
		_, err = fmt.Fprintln(k.stdout)
	}
	return err
}

// isTerminal reports whether w is a character device, such as a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func keyGenerateDataKey(ctx context.Context, k *keyCmd, fs *flag.FlagSet, args []string) error {
	n := fs.Int("bytes", 32, "length of the data key: 16, 24 or 32 `bytes`")
	ec := contextFlag(fs, "decrypting the data key needs the same pairs")
	aad := fs.String("aad", "", "older raw form of the context (opaque `text`; not with --context)")
	out := fs.String("out", "", "write the encrypted data key (a ciphertext blob), raw, to `FILE` instead of printing it in base64")
	ptOut := fs.String("plaintext-out", "", "write the plaintext data key, raw, to `FILE` (mode 0600; - for stdout, then with --out) instead of printing it in base64")
	pos, err := k.flags.parse(fs, args, "KEY_ID")
	if err != nil {
		return err
	}
	switch {
	case *n != 16 && *n != 24 && *n != 32:
		return usageError(fs, "--bytes %d: want 16, 24 or 32", *n)
	case (*out != "" || *ptOut != "") && k.flags.output == outputJSON:
		return usageError(fs, "--out and --plaintext-out exclude --output json")
	case *out == "-":
		return usageError(fs, "--out -: the encrypted data key goes to a file; for the plaintext one on stdout, --plaintext-out -")
	case *ptOut == "-" && *out == "":
		return usageError(fs, "--plaintext-out - needs --out FILE for the encrypted data key")
	case *ptOut != "" && *ptOut == *out:
		return usageError(fs, "--out and --plaintext-out name the same file")
	}
	if err := k.connect(); err != nil {
		return err
	}
	r, err := do(ctx, k, func(ctx context.Context) (*api.GenerateDataKeyResponse, error) {
		var r api.GenerateDataKeyResponse
		return &r, k.c.Call(ctx, api.OpGenerateDataKey, api.GenerateDataKeyRequest{KeyID: pos[0], NumberOfBytes: *n, EncryptionContext: ec.m, AAD: optionalBytes(*aad)}, &r)
	})
	if err != nil {
		return err
	}
	defer clear(r.Plaintext)
	if k.flags.output == outputJSON {
		return printJSON(k.stdout, r)
	}
	if *out != "" {
		if err := writeOutput(k.stdout, *out, r.CiphertextBlob, 0o644); err != nil {
			return err
		}
	}
	if *ptOut == "-" {
		// The raw data key alone on stdout, for a pipe.
		_, err := k.stdout.Write(r.Plaintext)
		return err
	}
	fields := []field{
		{"key id", r.KeyID},
		{"version", strconv.FormatUint(uint64(r.Version), 10)},
	}
	if *ptOut != "" {
		if err := writeOutput(k.stdout, *ptOut, r.Plaintext, 0o600); err != nil {
			return err
		}
	} else {
		fields = append(fields, field{"plaintext", base64.StdEncoding.EncodeToString(r.Plaintext)})
	}
	if *out == "" {
		fields = append(fields, field{"ciphertext", base64.StdEncoding.EncodeToString(r.CiphertextBlob)})
	}
	return printFields(k.stdout, fields)
}

// printKey shows a key: its properties, then (on the primary) its
// versions with their state and the regions holding each, and its replicas,
// in tables.
func (k *keyCmd) printKey(key *api.Key) error {
	if k.flags.output == outputJSON {
		return printJSON(k.stdout, key)
	}
	versions := make([]string, len(key.Versions))
	for i, v := range key.Versions {
		versions[i] = strconv.FormatUint(uint64(v), 10)
	}
	if staged := stagedVersions(key); len(staged) > 0 {
		versions = append(versions[:0:0], versions...)
		for i, v := range key.Versions {
			if slices.Contains(staged, v) {
				versions[i] += " staged"
			}
		}
	}
	fields := []field{
		{"key id", key.KeyID},
		{"description", key.Description},
		{"region", key.Region},
		{"role", key.Role},
		{"primary", key.PrimaryRegion},
		{"pending primary", key.PendingPrimary},
		{"key state", key.KeyState},
		{"deletion date", timePtrText(key.DeletionDate)},
		{"epoch", strconv.FormatUint(key.Epoch, 10)},
		{"partition", key.Partition},
		{"spec", key.KeySpec},
		{"usage", key.KeyUsage},
		{"enabled", strconv.FormatBool(key.Enabled)},
		{"versions", fmt.Sprintf("%s (current %d)", strings.Join(versions, ", "), key.CurrentVersion)},
		{"material missing", missingText(key.MaterialMissing)},
		{"created", timeText(key.CreatedAt)},
		{"updated", timeText(key.UpdatedAt)},
		{"replicated by", key.ReplicatedFrom},
		{"usable since", timePtrText(key.UsableAt)},
	}
	if key.Role == api.RolePrimary && len(key.Replicas) == 0 {
		fields = append(fields, field{"replicas", "none"})
	}
	if err := printFields(k.stdout, fields); err != nil {
		return err
	}
	if len(key.VersionDetails) > 0 {
		fmt.Fprintln(k.stdout)
		rows := make([][]string, len(key.VersionDetails))
		for i, v := range key.VersionDetails {
			rows[i] = []string{strconv.FormatUint(uint64(v.Version), 10), v.State,
				timeText(v.CreatedAt), timePtrText(v.ActivatedAt), strings.Join(v.ReplicatedTo, ", ")}
		}
		if err := printTable(k.stdout, []string{"VERSION", "STATE", "CREATED", "ACTIVATED", "REPLICATED TO"}, rows); err != nil {
			return err
		}
	}
	if len(key.Replicas) == 0 {
		return nil
	}
	fmt.Fprintln(k.stdout)
	rows := make([][]string, len(key.Replicas))
	for i, r := range key.Replicas {
		rows[i] = []string{r.Region, r.State, strconv.FormatUint(r.SyncedEpoch, 10), r.ReplicationID,
			timeText(r.UpdatedAt), timePtrText(r.DeletionDate), r.Reason}
	}
	return printTable(k.stdout, []string{"REPLICA", "STATE", "EPOCH", "REPLICATION", "UPDATED", "DELETION DATE", "REASON"}, rows)
}

// missingText names the versions whose material the region's HSM lacks.
func missingText(vs []uint32) string {
	if len(vs) == 0 {
		return ""
	}
	names := make([]string, len(vs))
	for i, v := range vs {
		names[i] = strconv.FormatUint(uint64(v), 10)
	}
	return strings.Join(names, ", ") + " (not in this region's HSM: encrypt and decrypt with them fail)"
}

// stagedVersions returns the key's STAGED versions (known on the primary
// only).
func stagedVersions(key *api.Key) []uint32 {
	var vs []uint32
	for _, v := range key.VersionDetails {
		if v.State == api.VersionStaged {
			vs = append(vs, v.Version)
		}
	}
	return vs
}

// printReplication shows a run, naming both ends.
func (k *keyCmd) printReplication(r *api.Replication) error {
	if k.flags.output == outputJSON {
		return printJSON(k.stdout, r)
	}
	from, to := k.flags.region, r.Peer
	if r.Role == "destination" {
		from, to = r.Peer, k.flags.region
	}
	return printFields(k.stdout, []field{
		{"replication", r.ReplicationID},
		{"key id", r.KeyID},
		{"version", strconv.FormatUint(uint64(r.Version), 10)},
		{"role", fmt.Sprintf("%s (%s → %s)", r.Role, from, to)},
		{"state", r.State},
		{"reason", r.Reason},
		{"created", timeText(r.CreatedAt)},
		{"updated", timeText(r.UpdatedAt)},
		{"completed", timePtrText(r.CompletedAt)},
	})
}

// setFlags returns the names of the flags given on the command line.
func setFlags(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}

func optionalBytes(s string) []byte {
	if s == "" {
		return nil
	}
	return []byte(s)
}

// maxBlobInput bounds what decrypt reads: the largest blob (21-byte
// header, 12-byte nonce, 4096 bytes, 16-byte tag) in base64 with line
// breaks fits easily.
const maxBlobInput = 16 << 10

// tooLargeError is an input of more than its limit (in bytes).
type tooLargeError int

func (e tooLargeError) Error() string { return fmt.Sprintf("more than %d bytes", int(e)) }

// readInput reads at most limit bytes from path ("-" is stdin); more, or
// nothing, is an error.
func readInput(path string, limit int) ([]byte, error) {
	var r io.Reader = os.Stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	switch {
	case err != nil:
		return nil, err
	case len(data) == 0:
		return nil, errors.New("empty")
	case len(data) > limit:
		return nil, tooLargeError(limit)
	}
	return data, nil
}

// decodeBlob takes a ciphertext blob raw or in base64 (as encrypt prints
// it). A raw blob starts with its format byte 0x01, which base64 never
// does, so the two cannot be confused.
func decodeBlob(data []byte) ([]byte, error) {
	if data[0] == 0x01 {
		return data, nil
	}
	blob, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(string(data)), ""))
	if err != nil {
		return nil, errors.New("neither a ciphertext blob (first byte 0x01) nor one in base64")
	}
	return blob, nil
}

// writeOutput writes data to path, or to stdout for "-".
func writeOutput(stdout io.Writer, path string, data []byte, perm os.FileMode) error {
	if path == "-" {
		_, err := stdout.Write(data)
		return err
	}
	return os.WriteFile(path, data, perm)
}

// contextPairs is a repeatable --context K=V flag: an encryption context.
type contextPairs struct{ m map[string]string }

func contextFlag(fs *flag.FlagSet, note string) *contextPairs {
	c := &contextPairs{}
	fs.Func("context", "a `K=V` pair of the encryption context (repeat for several; "+note+"; it is not secret: policies test it and audit events record it)", func(s string) error {
		k, v, ok := strings.Cut(s, "=")
		if !ok || k == "" {
			return fmt.Errorf("want KEY=VALUE, got %q", s)
		}
		if c.m == nil {
			c.m = map[string]string{}
		}
		if _, dup := c.m[k]; dup {
			return fmt.Errorf("key %q given twice", k)
		}
		c.m[k] = v
		return nil
	})
	return c
}

// maxPolicyFile bounds a policy document read from a file (AWS KMS's 32 KiB).
const maxPolicyFile = 32 << 10

// readPolicy reads a policy document from file ("" gives "": none).
func readPolicy(file string) (string, error) {
	if file == "" {
		return "", nil
	}
	b, err := readInput(file, maxPolicyFile)
	if err != nil {
		return "", fmt.Errorf("--policy %s: %w", file, err)
	}
	return string(b), nil
}

func keyPolicy(ctx context.Context, k *keyCmd, fs *flag.FlagSet, args []string) error {
	file := fs.String("file", "", "put: read the policy document (JSON) from `FILE` (- for stdin)")
	bypass := fs.Bool("bypass-policy-lockout-safety-check", false, "put: allow a policy that would not let you put the policy again")
	pos, err := k.flags.parse(fs, args, "get|put", "KEY_ID")
	if err != nil {
		return err
	}
	switch {
	case pos[0] != "get" && pos[0] != "put":
		return usageError(fs, "%q: want get or put", pos[0])
	case pos[0] == "put" && *file == "":
		return usageError(fs, "put needs --file")
	case pos[0] == "get" && *file != "":
		return usageError(fs, "--file is for put")
	}
	if pos[0] == "get" {
		if err := k.connect(); err != nil {
			return err
		}
		doc, err := do(ctx, k, func(ctx context.Context) (string, error) { return k.c.GetKeyPolicy(ctx, pos[1]) })
		if err != nil {
			return err
		}
		if k.flags.output == outputJSON {
			return printJSON(k.stdout, api.KeyPolicy{KeyID: pos[1], Policy: doc})
		}
		_, err = fmt.Fprintln(k.stdout, strings.TrimRight(doc, "\n"))
		return err
	}
	doc, err := readPolicy(*file)
	if err != nil {
		return err
	}
	if err := k.connect(); err != nil {
		return err
	}
	_, err = do(ctx, k, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, k.c.PutKeyPolicy(ctx, api.PutKeyPolicyRequest{KeyID: pos[1], Policy: doc, BypassPolicyLockoutSafetyCheck: *bypass})
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(k.stderr, "policy of %s in %s replaced\n", pos[1], k.flags.region)
	return nil
}
