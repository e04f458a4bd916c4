package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// "mrkrepl events" reads a region's audit events (docs/API.md, "Audit
// events"). By default it reads the region's events stream with an ordered
// consumer — an ephemeral consumer the client library recreates if it
// misses a message, so the events come in stream order, each once — and
// exits after the last stored event; --follow keeps reading until
// interrupted. That needs the JetStream API; a NATS user without it (the
// client role of docs/NATS.md) can use --live, a plain subscription that
// sees events as they are published and none from before.

// eventTypes are the types this build knows; others (from newer workers)
// are shown all the same.
var eventTypes = []string{
	api.EventKeyCreated, api.EventReplicationStarted, api.EventReplicaCreated, api.EventVersionReplicated,
	api.EventReplicationCompleted, api.EventReplicationFailed, api.EventRequestRejected,
	api.EventMessageRefused,
	api.EventVersionStaged, api.EventVersionActivated,
	api.EventPrimaryUpdateStarted, api.EventPrimaryUpdated, api.EventPrimaryUpdateCancelled,
	api.EventReplicaDeletionScheduled, api.EventReplicaDeletionCancelled, api.EventReplicaDeleted,
	api.EventKeyDeletionScheduled, api.EventKeyDeletionCancelled, api.EventKeyDeleted,
}

// typeList is the repeatable --type flag; a value may also list several
// types separated by commas.
type typeList []string

func (t *typeList) String() string { return strings.Join(*t, ",") }

func (t *typeList) Set(v string) error {
	for typ := range strings.SplitSeq(v, ",") {
		typ = strings.TrimSpace(typ)
		if typ == "" || strings.ContainsAny(typ, ".*> \t") {
			return fmt.Errorf("%q: not an event type (e.g. %s)", typ, api.EventReplicationCompleted)
		}
		*t = append(*t, typ)
	}
	return nil
}

// sinceValue is --since: a duration back from now, or an RFC 3339 time.
type sinceValue struct {
	d time.Duration
	t time.Time
}

func (s *sinceValue) String() string {
	if !s.t.IsZero() {
		return s.t.Format(time.RFC3339)
	}
	return s.d.String()
}

func (s *sinceValue) Set(v string) error {
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		*s = sinceValue{d: d}
		return nil
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		*s = sinceValue{t: t}
		return nil
	}
	return fmt.Errorf("%q: want a duration (90m, 24h) or an RFC 3339 time", v)
}

func (s *sinceValue) start(now time.Time) time.Time {
	if !s.t.IsZero() {
		return s.t
	}
	return now.Add(-s.d)
}

func runEvents(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("events", "--region NAME [--since DURATION|TIME | --all | --live] [--type TYPE]... [--follow] [flags]", stderr)
	var cf clientFlags
	cf.bind(fs)
	since := sinceValue{d: time.Hour}
	fs.Var(&since, "since", "show the events since this `DURATION` ago (90m, 24h) or RFC 3339 time")
	all := fs.Bool("all", false, "show every stored event (the stream keeps 30 days)")
	follow := fs.Bool("follow", false, "after the stored events, keep showing new ones until interrupted")
	live := fs.Bool("live", false, "show only new events, until interrupted, with a plain NATS subscription (for users without the JetStream API, such as the client role)")
	count := fs.Int("count", 0, "stop after `N` events (with --follow or --live: wait for them)")
	var types typeList
	fs.Var(&types, "type", "show only events of this `type` (KeyCreated, ReplicationStarted, VersionActivated, PrimaryUpdated, …: docs/API.md); repeat or separate with commas")
	if _, err := cf.parse(fs, args); err != nil {
		return err
	}
	set := setFlags(fs)
	switch {
	case *all && set["since"]:
		return usageError(fs, "--all and --since exclude each other")
	case *live && (*all || set["since"] || *follow):
		return usageError(fs, "--live shows new events only: it excludes --all, --since and --follow")
	case *count < 0:
		return usageError(fs, "--count %d: want 0 (no limit) or more", *count)
	}
	for _, t := range types {
		if !slices.Contains(eventTypes, t) {
			fmt.Fprintf(stderr, "mrkrepl events: note: %q is not an event type this mrkrepl knows (%s)\n", t, strings.Join(eventTypes, ", "))
		}
	}
	subjects := []string{layout.EventsWildcard(cf.region)}
	if len(types) > 0 {
		subjects = subjects[:0]
		for _, t := range slices.Compact(slices.Sorted(slices.Values(types))) {
			subjects = append(subjects, layout.EventSubject(cf.region, t))
		}
	}
	conn, err := cf.connect("events")
	if err != nil {
		return err
	}
	defer conn.close()
	p := &eventPrinter{w: stdout, stderr: stderr, format: cf.output, limit: *count}
	if *live {
		return readLiveEvents(ctx, conn, subjects, p)
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: subjects, DeliverPolicy: jetstream.DeliverAllPolicy}
	if !*all {
		start := since.start(time.Now())
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &start
	}
	err = readStoredEvents(ctx, conn, cf.region, cfg, *follow, p)
	if ctx.Err() != nil {
		return nil // interrupted: the way to end --follow
	}
	return err
}

// readStoredEvents prints the stream's events from cfg's start, then, with
// follow, new ones until ctx ends.
func readStoredEvents(ctx context.Context, conn *clientConn, region string, cfg jetstream.OrderedConsumerConfig, follow bool, p *eventPrinter) error {
	js, err := jetstream.New(conn.nc)
	if err != nil {
		return err
	}
	stream := layout.EventsStream(region)
	cctx, cancel := conn.call(ctx)
	cons, err := js.OrderedConsumer(cctx, stream, cfg)
	cancel()
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("no stream %s on %s: no worker of %s has run there (are --region and --server right?)", stream, conn.nc.ConnectedUrlRedacted(), region)
		}
		if conn.deniedErr() != nil {
			// The client role of docs/NATS.md may subscribe to events but
			// not use the JetStream API.
			return fmt.Errorf("read stream %s: %w; a user without the JetStream API can see new events with --live", stream, conn.explain(ctx, err))
		}
		return fmt.Errorf("read stream %s: %w", stream, conn.explain(ctx, err))
	}
	msgs, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("read stream %s: %w", stream, err)
	}
	defer msgs.Stop()
	// The stream is readable: the header, even if no event follows (an
	// empty result is a header alone, not nothing).
	if err := p.printHeader(); err != nil {
		return err
	}
	pending := uint64(0)
	if info := cons.CachedInfo(); info != nil {
		pending = info.NumPending
	}
	if pending == 0 && !follow {
		return nil
	}
	for {
		nctx, cancel := ctx, context.CancelFunc(func() {})
		if !follow {
			// The stored events are there: one that does not come within
			// --timeout is not coming (it expired meanwhile, say).
			nctx, cancel = context.WithTimeout(ctx, conn.timeout)
		}
		msg, err := msgs.Next(jetstream.NextContext(nctx))
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil // interrupted: a clean stop
		case errors.Is(err, context.DeadlineExceeded):
			return fmt.Errorf("read stream %s: no more events within --timeout %s, though some were pending", stream, conn.timeout)
		case err != nil:
			return fmt.Errorf("read stream %s: %w", stream, err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("read stream %s: %w", stream, err)
		}
		if err := p.print(msg.Data(), meta.Sequence.Stream); err != nil {
			return err
		}
		if p.done() || !follow && meta.NumPending == 0 {
			return nil
		}
	}
}

// readLiveEvents prints events published from now on, until ctx ends.
func readLiveEvents(ctx context.Context, conn *clientConn, subjects []string, p *eventPrinter) error {
	ch := make(chan *nats.Msg, 256)
	for _, s := range subjects {
		sub, err := conn.nc.ChanSubscribe(s, ch)
		if err != nil {
			return fmt.Errorf("subscribe to %s: %w", s, err)
		}
		defer sub.Unsubscribe()
	}
	// Make sure the server has the subscriptions (and allows them) before
	// saying nothing for a long time.
	cctx, cancel := conn.call(ctx)
	err := conn.nc.FlushWithContext(cctx)
	cancel()
	if err != nil {
		return fmt.Errorf("subscribe to %s: %w", strings.Join(subjects, ", "), conn.explain(ctx, err))
	}
	if err := p.printHeader(); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-conn.denied.Done():
			return fmt.Errorf("subscribe to %s: %w", strings.Join(subjects, ", "), conn.explain(ctx, context.Canceled))
		case m := <-ch:
			if err := p.print(m.Data, 0); err != nil {
				return err
			}
			if p.done() {
				return nil
			}
		}
	}
}

// eventPrinter writes events as table lines (with a header before the
// first) or as JSON lines.
type eventPrinter struct {
	w, stderr io.Writer
	format    outputFormat
	header    bool
	limit     int // stop after this many events (0: no limit)
	printed   int
}

// done reports whether the limit of events is reached.
func (p *eventPrinter) done() bool { return p.limit > 0 && p.printed >= p.limit }

// The table's columns have fixed widths, so that lines printed one by one
// as events arrive line up: time (RFC 3339 in UTC, milliseconds), type, key,
// version, actor, peer (or, for an event that names several regions, how
// many: the regions follow the reason, at the end of the line, where no
// width limits them), replication, reason.
const eventLine = "%-24s  %-24s  %-36s  %-7s  %-21s  %-14s  %-32s  %s\n"

func (p *eventPrinter) print(data []byte, seq uint64) error {
	var ev api.Event
	if err := json.Unmarshal(data, &ev); err != nil || ev.Type == "" {
		at := ""
		if seq > 0 {
			at = fmt.Sprintf(" (stream sequence %d)", seq)
		}
		fmt.Fprintf(p.stderr, "mrkrepl events: skipped a message that is not an event%s\n", at)
		return nil
	}
	p.printed++
	if p.format == outputJSON {
		// The event as published, on one line.
		var b bytes.Buffer
		if err := json.Compact(&b, data); err != nil {
			return err
		}
		b.WriteByte('\n')
		_, err := p.w.Write(b.Bytes())
		return err
	}
	if err := p.printHeader(); err != nil {
		return err
	}
	version, peer, reason := "", ev.Peer, ev.Reason
	if ev.Version > 0 {
		version = strconv.FormatUint(uint64(ev.Version), 10)
	}
	if peer == "" && len(ev.Regions) > 0 {
		peer = fmt.Sprintf("%d regions", len(ev.Regions))
		if len(ev.Regions) == 1 {
			peer = ev.Regions[0]
		} else if regions := "regions " + strings.Join(ev.Regions, ", "); reason == "" {
			reason = regions
		} else {
			reason += " (" + regions + ")"
		}
	}
	_, err := fmt.Fprintf(p.w, eventLine, ev.Time.UTC().Format("2006-01-02T15:04:05.000Z07:00"), ev.Type,
		orDash(ev.KeyID), orDash(version), orDash(ev.Actor), orDash(peer), orDash(ev.ReplicationID), orDash(reason))
	return err
}

// printHeader writes the table's header, once (nothing for JSON lines).
func (p *eventPrinter) printHeader() error {
	if p.format == outputJSON || p.header {
		return nil
	}
	p.header = true
	_, err := fmt.Fprintf(p.w, eventLine, "TIME", "TYPE", "KEY", "VERSION", "ACTOR", "PEER", "REPLICATION", "REASON")
	return err
}
