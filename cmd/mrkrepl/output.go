package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
)

// Output of the client commands (key, events): --output table for people,
// aligned columns of the fields that matter; --output json for programs, the
// API's objects as they are (package api), indented — or, for a stream of
// events, one compact object per line.

// outputFormat is the value of --output.
type outputFormat string

const (
	outputTable outputFormat = "table"
	outputJSON  outputFormat = "json"
)

// String and Set make outputFormat a flag.Value that accepts only the two
// formats, so a bad value is a usage error at parse time.
func (o *outputFormat) String() string { return string(*o) }

func (o *outputFormat) Set(s string) error {
	switch f := outputFormat(strings.ToLower(s)); f {
	case outputTable, outputJSON:
		*o = f
		return nil
	}
	return fmt.Errorf("%q: want table or json", s)
}

// printJSON writes v indented, with a final newline. HTML characters are
// not escaped: the output is for terminals and jq, not for web pages.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// field is one row of a name/value listing.
type field struct{ name, value string }

// printFields writes one "name  value" row per field, the values aligned;
// fields with an empty value are left out.
func printFields(w io.Writer, fields []field) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	for _, f := range fields {
		if f.value != "" {
			fmt.Fprintf(tw, "%s\t%s\n", f.name, f.value)
		}
	}
	return tw.Flush()
}

// printTable writes a header and rows in aligned columns; an empty cell is
// shown as "-" so that every row has every column.
func printTable(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		cells := make([]string, len(r))
		for i, c := range r {
			cells[i] = orDash(c)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// timeText formats a time for a table: RFC 3339 in UTC, to the second;
// the zero time is "".
func timeText(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func timePtrText(t *time.Time) string {
	if t == nil {
		return ""
	}
	return timeText(*t)
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
