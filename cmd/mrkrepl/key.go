package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
)

// This file is "mrkrepl key": its subcommand table and dispatcher, and the
// key-management subcommands (create, describe, list, policy). The
// connection flags are in clientconn.go, replicate in key_replicate.go,
// the data plane in key_data.go, the tables in output.go.

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
	return runClientSubcommand(ctx, "key", keySubs, keyUsage, args, stdout, stderr)
}

// runClientSubcommand runs "mrkrepl <command> <subcommand>" for the client
// commands (key, access-key): usage, the subcommand's flags with the shared
// connection flags, and its error in the words of the API.
func runClientSubcommand(ctx context.Context, command string, subs []keySub, usage func(io.Writer), args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		usage(stderr)
		return errUsage
	}
	if a := args[0]; a == "-h" || a == "-help" || a == "--help" || a == "help" {
		usage(stdout)
		return nil
	}
	i := slices.IndexFunc(subs, func(s keySub) bool { return s.name == args[0] })
	if i < 0 {
		fmt.Fprintf(stderr, "mrkrepl %s: unknown subcommand %q\n\n", command, args[0])
		usage(stderr)
		return errUsage
	}
	sub := subs[i]
	k := &keyCmd{stdout: stdout, stderr: stderr}
	defer func() {
		if k.conn != nil {
			k.conn.close()
		}
	}()
	fs := newFlagSet(command+" "+sub.name, sub.synopsis, stderr)
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
