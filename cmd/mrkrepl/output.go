package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
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
