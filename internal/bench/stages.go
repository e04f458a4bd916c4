package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/nats-io/nats.go/jetstream"
)

// The stages of the latency to "replica usable", in order. Each ends when
// a message is stored in a stream (JetStream's own time stamp) or, for the
// last, at the destination's ReplicaCreated; the first begins at the
// client's replicate call. Their sum is the usable latency.
var usableStages = []string{
	"source: request to init sent",
	"proxy: init",
	"destination: init to offer sent",
	"proxy: offer",
	"source: offer to material sent",
	"proxy: material",
	"destination: material to usable",
}

// Stage is the distribution of one stage of the usable latency, in ms.
type Stage struct {
	Stage string `json:"stage"`
	Percentiles
}

// runStamps are the times one run's messages were stored.
type runStamps struct {
	keyID, dst string
	out, in    [4]int64 // Unix ns, by message: init, offer, material, receipt
}

var stampIndex = map[messages.Type]int{
	messages.TypeInit: 0, messages.TypeOffer: 1, messages.TypeMaterial: 2, messages.TypeReceipt: 3,
}

// stages reads, after the run, every region's outbox and inbox from the
// replication phase's start (ordered consumers: no effect on the figures
// already taken) and splits each replication's usable latency into
// usableStages. Runs of a job other than the one that made the replica
// usable (retries) are skipped.
func (r *run) stages(ctx context.Context, p *mrkrepltest.Partition, order []*job, since time.Time) ([]Stage, error) {
	runs := map[string]*runStamps{}
	for _, region := range r.regions {
		nc, err := p.Connect(region, "bench-stages")
		if err != nil {
			return nil, err
		}
		js, err := jetstream.New(nc)
		if err != nil {
			nc.Close()
			return nil, err
		}
		for _, stream := range []string{layout.OutboxStream(region), layout.InboxStream(region)} {
			out := stream == layout.OutboxStream(region)
			err := readStream(ctx, js, stream, since, func(data []byte, stored time.Time) {
				env, err := messages.Parse(data)
				if err != nil {
					return
				}
				i, ok := stampIndex[env.Message.Type]
				if !ok {
					return
				}
				rs := runs[env.Message.ReplicationID]
				if rs == nil {
					rs = &runStamps{}
					runs[env.Message.ReplicationID] = rs
				}
				if env.Message.Init != nil {
					rs.keyID, rs.dst = env.Message.Init.KeyID, env.Message.Dst
				}
				if out {
					rs.out[i] = stored.UnixNano()
				} else {
					rs.in[i] = stored.UnixNano()
				}
			})
			if err != nil {
				nc.Close()
				return nil, fmt.Errorf("read %s: %w", stream, err)
			}
		}
		nc.Close()
	}
	byJob := map[jobID]*runStamps{}
	for _, rs := range runs {
		complete := rs.keyID != "" && rs.out[0] != 0 && rs.in[0] != 0 && rs.out[1] != 0 && rs.in[1] != 0 && rs.out[2] != 0 && rs.in[2] != 0
		if !complete {
			continue
		}
		id := jobID{rs.keyID, rs.dst}
		if old := byJob[id]; old == nil || rs.in[2] > old.in[2] {
			byJob[id] = rs // the latest complete run made the replica usable
		}
	}
	ds := make([][]time.Duration, len(usableStages))
	for _, j := range order {
		rs, start, usable := byJob[jobID{j.key, j.dst}], j.start.Load(), j.usable.Load()
		if rs == nil || start == 0 || usable == 0 || j.failed.Load() != nil {
			continue
		}
		bounds := []int64{start, rs.out[0], rs.in[0], rs.out[1], rs.in[1], rs.out[2], rs.in[2], usable}
		for s := range usableStages {
			ds[s] = append(ds[s], time.Duration(bounds[s+1]-bounds[s]))
		}
	}
	out := make([]Stage, len(usableStages))
	for s, name := range usableStages {
		out[s] = Stage{Stage: name, Percentiles: percentiles(ds[s])}
	}
	return out, nil
}

// readStream calls fn for every message of stream stored since then, up to
// the last one stored when it starts.
func readStream(ctx context.Context, js jetstream.JetStream, stream string, since time.Time, fn func(data []byte, stored time.Time)) error {
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return err
	}
	last := info.State.LastSeq
	if info.State.Msgs == 0 {
		return nil
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &since,
	})
	if err != nil {
		return err
	}
	for {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return err
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			md, err := msg.Metadata()
			if err != nil {
				continue
			}
			fn(msg.Data(), md.Timestamp)
			if md.Sequence.Stream >= last || md.NumPending == 0 {
				return nil
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return err
		}
		if n == 0 {
			return nil // nothing stored since
		}
	}
}
