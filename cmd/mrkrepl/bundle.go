package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mrkrepl/mrkrepl/messages"
)

// runBundle is "mrkrepl bundle": merge fragments (or whole bundles) of one
// partition into its trust bundle; and the subcommands an RSK rotation
// needs: add a region's new key, retire a key (set its not_after), remove
// it, list the keys.
func runBundle(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "add":
			return runBundleAdd(args[1:], stdout, stderr)
		case "retire":
			return runBundleRetire(args[1:], stdout, stderr)
		case "remove":
			return runBundleRemove(args[1:], stdout, stderr)
		case "list":
			return runBundleList(args[1:], stdout, stderr)
		case "sign":
			return runBundleSign(args[1:], stdout, stderr)
		case "verify":
			return runBundleVerify(args[1:], stdout, stderr)
		case "root-key":
			return runBundleRootKey(args[1:], stdout, stderr)
		}
	}
	fs := newFlagSet("bundle", "FRAGMENT.json... > bundle.json", stderr)
	usage := fs.Usage
	fs.Usage = func() {
		usage()
		fmt.Fprint(stderr, `
Merges fragments ("mrkrepl rsk") or bundles of one partition into its trust
bundle. To rotate a region's RSK (docs/OPERATIONS.md, "RSK rotation"):

  mrkrepl bundle add [-w] BUNDLE FRAGMENT...         add the keys of fragments ("mrkrepl rsk create")
  mrkrepl bundle retire [-w] --kid KID [--at WHEN] BUNDLE   end a key's validity (not_after)
  mrkrepl bundle remove [-w] --kid KID BUNDLE        drop a key
  mrkrepl bundle list BUNDLE                         the keys and whether each is valid now

The workers and proxies take the bundle signed by the partition's root key
(docs/OPERATIONS.md, "Trust bundle"):

  mrkrepl bundle root-key create --out KEY [--partition NAME]   make the root key (KEY, KEY.pub)
  mrkrepl bundle sign --root-key KEY --out SIGNED BUNDLE        sign, serial = previous + 1
  mrkrepl bundle verify --root-key KEY.pub SIGNED               check a signed bundle

A fragment file named like one of these needs a path: ./add.
`)
	}
	if err := parseFlags(fs, args, true); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "no fragment given")
		fs.Usage()
		return errUsage
	}
	var partition string
	var regions []string
	var keys []messages.BundleKey
	for _, path := range fs.Args() {
		b, err := messages.LoadBundle(path)
		if err != nil {
			return err
		}
		if partition == "" {
			partition = b.Partition()
		} else if b.Partition() != partition {
			return fmt.Errorf("%s is for partition %q, not %q", path, b.Partition(), partition)
		}
		for _, r := range b.Regions() {
			if !slices.Contains(regions, r) {
				regions = append(regions, r)
			}
		}
		keys = append(keys, b.Keys()...)
	}
	merged, err := messages.NewBundle(partition, regions, keys)
	if err != nil {
		return err
	}
	return writeJSON(stdout, merged)
}

// bundleEdit is what the editing subcommands share: the bundle file and
// where the result goes.
type bundleEdit struct {
	fs      *flag.FlagSet
	inPlace *bool
	path    string
	b       *messages.Bundle
}

func newBundleEdit(name, synopsis string, stderr io.Writer) *bundleEdit {
	e := &bundleEdit{fs: newFlagSet("bundle "+name, synopsis, stderr)}
	e.inPlace = e.fs.Bool("w", false, "write the result to BUNDLE (a temporary file renamed over it) instead of stdout")
	return e
}

// parse parses the flags (anywhere among the arguments) and loads the
// bundle, the first argument; the others are returned.
func (e *bundleEdit) parse(args []string, minArgs, maxArgs int) ([]string, error) {
	pos, err := parseInterspersed(e.fs, args)
	if err != nil {
		return nil, err
	}
	if n := len(pos); n < minArgs || (maxArgs >= 0 && n > maxArgs) {
		if n < minArgs {
			return nil, usageError(e.fs, "missing argument")
		}
		return nil, usageError(e.fs, "unexpected argument %q", pos[maxArgs])
	}
	e.path = pos[0]
	if e.fs.Name() == "mrkrepl bundle list" {
		// list also shows a signed bundle (unverified: bundle verify).
		e.b, err = loadAnyBundle(e.path)
	} else {
		e.b, err = messages.LoadBundle(e.path)
	}
	if err != nil {
		return nil, err
	}
	return pos[1:], nil
}

// write writes b to stdout, or atomically over the bundle file with -w
// (same directory, same mode): a daemon reloading the file never reads half
// of it.
func (e *bundleEdit) write(b *messages.Bundle, stdout io.Writer) error {
	data, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	if !*e.inPlace {
		_, err := stdout.Write(data)
		return err
	}
	fi, err := os.Stat(e.path)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(e.path), ".bundle-*.json")
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(fi.Mode().Perm())
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), e.path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", e.path, err)
	}
	return nil
}

// rebuild makes the bundle with keys, the regions and partition unchanged.
func (e *bundleEdit) rebuild(keys []messages.BundleKey) (*messages.Bundle, error) {
	return messages.NewBundle(e.b.Partition(), e.b.Regions(), keys)
}

// find returns the key whose kid is kid or starts with it (at least 8 hex
// digits, naming one key).
func (e *bundleEdit) find(kid string) (messages.BundleKey, error) {
	kid = strings.ToLower(kid)
	if len(kid) < 8 || strings.Trim(kid, "0123456789abcdef") != "" {
		return messages.BundleKey{}, usageError(e.fs, "--kid: want a kid or its first hex digits (at least 8), got %q", kid)
	}
	var found []messages.BundleKey
	for _, k := range e.b.Keys() {
		if strings.HasPrefix(hex.EncodeToString(k.KID), kid) {
			found = append(found, k)
		}
	}
	switch len(found) {
	case 0:
		return messages.BundleKey{}, fmt.Errorf("no key with kid %s in %s", kid, e.path)
	case 1:
		return found[0], nil
	}
	return messages.BundleKey{}, fmt.Errorf("%d keys of %s have a kid starting with %s: give more digits", len(found), e.path, kid)
}

func fmtTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// runBundleAdd adds the keys of fragments to a bundle whose regions they
// are of.
func runBundleAdd(args []string, stdout, stderr io.Writer) error {
	e := newBundleEdit("add", "[-w] [flags] BUNDLE FRAGMENT...", stderr)
	notBefore := e.fs.String("not-before", "", "set the added keys' not_before to `WHEN`: an RFC 3339 time, \"now\", or a duration from now (default: the fragments')")
	notAfter := e.fs.String("not-after", "", "set the added keys' not_after to `WHEN`, likewise (default: the fragments')")
	usage := e.fs.Usage
	e.fs.Usage = func() {
		usage()
		fmt.Fprint(stderr, `
Adds the keys of the fragments (from "mrkrepl rsk create") to the bundle. A
fragment's region must already be in the bundle (to add a region, merge with
"mrkrepl bundle"); a key already there with the same window is left as is.
`)
	}
	frags, err := e.parse(args, 2, -1)
	if err != nil {
		return err
	}
	now := time.Now().UTC().Truncate(time.Second)
	var nb, na time.Time
	if *notBefore != "" {
		if nb, err = parseWhen(*notBefore, now); err != nil {
			return usageError(e.fs, "--not-before: %v", err)
		}
	}
	if *notAfter != "" {
		if na, err = parseWhen(*notAfter, now); err != nil {
			return usageError(e.fs, "--not-after: %v", err)
		}
	}
	keys := e.b.Keys()
	added := 0
	for _, path := range frags {
		f, err := messages.LoadBundle(path)
		if err != nil {
			return err
		}
		if f.Partition() != e.b.Partition() {
			return fmt.Errorf("%s is for partition %q, not %q", path, f.Partition(), e.b.Partition())
		}
		for _, k := range f.Keys() {
			if !e.b.HasRegion(k.Region) {
				return fmt.Errorf("%s: region %s is not in the bundle; merge its fragment with \"mrkrepl bundle\" to add a region", path, k.Region)
			}
			if !nb.IsZero() {
				k.NotBefore = nb
			}
			if !na.IsZero() {
				k.NotAfter = na
			}
			if old, ok := e.b.Key(k.KID); ok {
				if old.Region == k.Region && old.NotBefore.Equal(k.NotBefore) && old.NotAfter.Equal(k.NotAfter) {
					fmt.Fprintf(stderr, "kid %x of %s is already in the bundle\n", k.KID, k.Region)
					continue
				}
				return fmt.Errorf("kid %x is already in the bundle (%s, %s to %s); retire or remove it to change it",
					k.KID, old.Region, fmtTime(old.NotBefore), fmtTime(old.NotAfter))
			}
			if slices.ContainsFunc(keys, func(o messages.BundleKey) bool { return bytes.Equal(o.KID, k.KID) }) {
				return fmt.Errorf("kid %x is given twice", k.KID)
			}
			keys = append(keys, k)
			added++
			fmt.Fprintf(stderr, "added kid %x for %s, valid from %s to %s\n", k.KID, k.Region, fmtTime(k.NotBefore), fmtTime(k.NotAfter))
			if k.NotBefore.Before(now.Add(5 * time.Minute)) {
				fmt.Fprintf(stderr, "note: kid %x is valid from %s: %s's workers sign with it as soon as they have this bundle, perhaps before other regions and the proxies do; a not_before later than the time the bundle takes to reach them all avoids refusals (--not-before 1h)\n",
					k.KID, fmtTime(k.NotBefore), k.Region)
			}
		}
	}
	b, err := e.rebuild(keys)
	if err != nil {
		return err
	}
	return e.write(b, stdout)
}

// otherValidAfter reports whether region has a key besides kid valid at
// some time after t.
func otherValidAfter(b *messages.Bundle, region string, kid []byte, t time.Time) bool {
	for _, k := range b.Keys() {
		if k.Region == region && !bytes.Equal(k.KID, kid) && k.NotAfter.After(t) {
			return true
		}
	}
	return false
}

// runBundleRetire brings a key's not_after forward.
func runBundleRetire(args []string, stdout, stderr io.Writer) error {
	e := newBundleEdit("retire", "[-w] --kid KID [--at WHEN] BUNDLE", stderr)
	kid := e.fs.String("kid", "", "the key's `KID`, or its first hex digits (at least 8) (required)")
	at := e.fs.String("at", "now", "its new not_after (`WHEN`): an RFC 3339 time, \"now\", or a duration from now (1h, -10m)")
	force := e.fs.Bool("force", false, "retire it even if its region then has no valid key left")
	usage := e.fs.Usage
	e.fs.Usage = func() {
		usage()
		fmt.Fprint(stderr, `
Sets the key's not_after: messages it signs with a later sent_at are refused
(kid_not_valid), and its region's workers sign with another key. Messages
signed before stay valid until they expire; remove the key after that.
`)
	}
	if _, err := e.parse(args, 1, 1); err != nil {
		return err
	}
	if err := required(e.fs, "kid", *kid); err != nil {
		return err
	}
	now := time.Now().UTC()
	when, err := parseWhen(*at, now)
	if err != nil {
		return usageError(e.fs, "--at: %v", err)
	}
	k, err := e.find(*kid)
	if err != nil {
		return err
	}
	switch {
	case !when.After(k.NotBefore):
		return fmt.Errorf("kid %x is valid only from %s, after %s: remove it instead (mrkrepl bundle remove)", k.KID, fmtTime(k.NotBefore), fmtTime(when))
	case !when.Before(k.NotAfter):
		return fmt.Errorf("kid %x is valid until %s already; retire only brings not_after forward", k.KID, fmtTime(k.NotAfter))
	case !*force && !otherValidAfter(e.b, k.Region, k.KID, when):
		return fmt.Errorf("retiring kid %x leaves region %s without an RSK valid after %s: add its new RSK first (mrkrepl rsk create, mrkrepl bundle add), or --force", k.KID, k.Region, fmtTime(when))
	}
	keys := e.b.Keys()
	for i := range keys {
		if bytes.Equal(keys[i].KID, k.KID) {
			keys[i].NotAfter = when
		}
	}
	b, err := e.rebuild(keys)
	if err != nil {
		return err
	}
	if err := e.write(b, stdout); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "retired kid %x of %s: not_after %s (was %s)\n", k.KID, k.Region, fmtTime(when), fmtTime(k.NotAfter))
	return nil
}

// runBundleRemove drops a key.
func runBundleRemove(args []string, stdout, stderr io.Writer) error {
	e := newBundleEdit("remove", "[-w] --kid KID BUNDLE", stderr)
	kid := e.fs.String("kid", "", "the key's `KID`, or its first hex digits (at least 8) (required)")
	force := e.fs.Bool("force", false, "remove it even if it is still valid, or its region's last key")
	usage := e.fs.Usage
	e.fs.Usage = func() {
		usage()
		fmt.Fprint(stderr, `
Removes the key: messages it signed are refused (unknown_kid). Retire it first
(mrkrepl bundle retire) and remove it once the messages it signed have
expired: after its not_after plus the message TTL (5 minutes by default).
`)
	}
	if _, err := e.parse(args, 1, 1); err != nil {
		return err
	}
	if err := required(e.fs, "kid", *kid); err != nil {
		return err
	}
	k, err := e.find(*kid)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	switch {
	case *force:
	case k.NotAfter.After(now):
		return fmt.Errorf("kid %x is valid until %s: retire it first (mrkrepl bundle retire) and remove it once the messages it signed have expired, or --force", k.KID, fmtTime(k.NotAfter))
	case !otherValidAfter(e.b, k.Region, k.KID, now):
		return fmt.Errorf("kid %x is the last valid key of region %s: add its new RSK first, or --force", k.KID, k.Region)
	}
	var keys []messages.BundleKey
	for _, o := range e.b.Keys() {
		if !bytes.Equal(o.KID, k.KID) {
			keys = append(keys, o)
		}
	}
	b, err := e.rebuild(keys)
	if err != nil {
		return err
	}
	if err := e.write(b, stdout); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "removed kid %x of %s\n", k.KID, k.Region)
	return nil
}

// runBundleList prints the keys of a bundle and their state now.
func runBundleList(args []string, stdout, stderr io.Writer) error {
	e := newBundleEdit("list", "BUNDLE", stderr)
	usage := e.fs.Usage
	e.fs.Usage = func() {
		usage()
		fmt.Fprint(stderr, `
Lists the bundle's keys by region with their window and state now: valid,
not yet valid, or expired. "newest" marks the key a region's workers sign with
now if their HSM holds it (the valid one with the latest not_before).
`)
	}
	if _, err := e.parse(args, 1, 1); err != nil {
		return err
	}
	if *e.inPlace {
		return usageError(e.fs, "-w: list writes nothing")
	}
	now := time.Now()
	newest := map[string]messages.BundleKey{}
	for _, k := range e.b.Keys() { // sorted by region, not_before, kid
		if !now.Before(k.NotBefore) && !now.After(k.NotAfter) {
			if n, ok := newest[k.Region]; !ok || !k.NotBefore.Before(n.NotBefore) {
				newest[k.Region] = k
			}
		}
	}
	fmt.Fprintf(stdout, "partition %s, regions %s\n", e.b.Partition(), strings.Join(e.b.Regions(), ", "))
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REGION\tKID\tNOT BEFORE\tNOT AFTER\tSTATE")
	for _, k := range e.b.Keys() {
		state := "valid"
		switch {
		case now.Before(k.NotBefore):
			state = "not yet valid"
		case now.After(k.NotAfter):
			state = "expired"
		case bytes.Equal(newest[k.Region].KID, k.KID):
			state = "valid, newest"
		}
		fmt.Fprintf(tw, "%s\t%x\t%s\t%s\t%s\n", k.Region, k.KID, fmtTime(k.NotBefore), fmtTime(k.NotAfter), state)
	}
	for _, r := range e.b.Regions() {
		if _, ok := newest[r]; !ok {
			fmt.Fprintf(tw, "%s\t(no valid key: the region's messages are refused)\t\t\t\n", r)
		}
	}
	return tw.Flush()
}

func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}
