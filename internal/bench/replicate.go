package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/nats-io/nats.go/jetstream"
)

// This file drives the replications and follows their audit events.

// follow starts an ordered consumer on region's audit events that records
// the stage times of the benchmark's jobs.
func (r *run) follow(ctx context.Context, p *mrkrepltest.Partition, region string) error {
	nc, err := p.Connect(region, "bench-events")
	if err != nil {
		return err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	cons, err := js.OrderedConsumer(ctx, layout.EventsStream(region), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{
			layout.EventSubject(region, api.EventReplicaCreated),
			layout.EventSubject(region, api.EventReplicationCompleted),
			layout.EventSubject(region, api.EventReplicationFailed),
		},
		DeliverPolicy: jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return fmt.Errorf("follow events of %s: %w", region, err)
	}
	_, err = cons.Consume(func(msg jetstream.Msg) {
		var ev api.Event
		if err := json.Unmarshal(msg.Data(), &ev); err != nil {
			return
		}
		r.onEvent(&ev)
	})
	if err != nil {
		return fmt.Errorf("follow events of %s: %w", region, err)
	}
	return nil
}

func (r *run) onEvent(ev *api.Event) {
	switch ev.Type {
	case api.EventReplicaCreated: // in the destination
		if j := r.jobs[jobID{ev.KeyID, ev.Region}]; j != nil && j.src == ev.Peer {
			j.usable.Store(ev.Time.UnixNano())
		}
	case api.EventReplicationCompleted: // in the source
		if j := r.jobs[jobID{ev.KeyID, ev.Peer}]; j != nil && j.src == ev.Region {
			j.confirmed.Store(ev.Time.UnixNano())
			if j.finish() {
				r.ended.Add(1)
			}
		}
	case api.EventReplicationFailed: // in either
		j := r.jobs[jobID{ev.KeyID, ev.Peer}]
		if j == nil || j.src != ev.Region {
			j = r.jobs[jobID{ev.KeyID, ev.Region}]
		}
		if j != nil {
			reason := fmt.Sprintf("%s: %s (reported by %s)", j.src+"→"+j.dst, ev.Reason, ev.Region)
			if j.confirmed.Load() == 0 && j.failed.CompareAndSwap(nil, &reason) {
				r.failed.Add(1)
			}
			if j.finish() {
				r.ended.Add(1)
			}
		}
	}
}

// ticker calls r.progress with snap() every 200ms until stop is called;
// snap is called even without a Progress callback: it may sample.
func (r *run) ticker(snap func() Progress) (stop func()) {
	r.progress(snap())
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				r.progress(snap())
				return
			case <-t.C:
				r.progress(snap())
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// cpuSample is the process CPU time when ended replications reached done.
type cpuSample struct {
	done int
	cpu  time.Duration
}

// replicate runs the jobs with at most Concurrency in flight, paced by
// Rate, until Count, Duration or the jobs run out, then waits for those
// in flight.
func (r *run) replicate(ctx context.Context, clients map[string]*client.Client, order []*job, res *Result) error {
	cfg := r.cfg
	total := len(order)
	if cfg.Duration > 0 && cfg.Count == 0 {
		total = 0 // bounded by time: no known total
	}
	var (
		phase    atomic.Value
		samples  []cpuSample
		sampleMu sync.Mutex
	)
	phase.Store("replicate")
	var live liveMax
	gc0, sched0 := readGC(), schedLatencies()
	start := time.Now()
	cpu0, srv0 := r.cpu(), r.serverCPU()
	sampleMu.Lock()
	samples = append(samples, cpuSample{0, cpu0})
	sampleMu.Unlock()
	stop := r.ticker(func() Progress {
		ended := int(r.ended.Load())
		live.sample()
		sampleMu.Lock()
		samples = append(samples, cpuSample{ended, r.cpu()})
		sampleMu.Unlock()
		p := Progress{
			Phase: phase.Load().(string), Done: ended, Total: total,
			InFlight: int(r.started.Load()) - ended, Failed: int(r.failed.Load()),
			Elapsed: time.Since(start),
		}
		if cfg.Duration > 0 {
			p.Remaining = max(cfg.Duration-p.Elapsed, 0)
		}
		return p
	})

	sem := make(chan struct{}, cfg.Concurrency)
	var (
		wg       sync.WaitGroup
		callErr  atomic.Pointer[error]
		stopped  = "count"
		deadline time.Time
	)
	if cfg.Keys > 0 {
		stopped = "keys"
	}
	if cfg.Duration > 0 {
		deadline = start.Add(cfg.Duration)
	}
loop:
	for i, j := range order {
		if cfg.Rate > 0 {
			next := start.Add(time.Duration(float64(i) / cfg.Rate * float64(time.Second)))
			if d := time.Until(next); d > 0 {
				select {
				case <-time.After(d):
				case <-ctx.Done():
					break loop
				}
			}
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			break loop
		}
		if !deadline.IsZero() && !time.Now().Before(deadline) {
			<-sem
			stopped = "duration"
			break loop
		}
		if callErr.Load() != nil {
			<-sem
			break loop
		}
		r.started.Add(1)
		wg.Go(func() {
			defer func() { <-sem }()
			j.start.Store(time.Now().UnixNano())
			if _, err := clients[j.src].ReplicateKey(ctx, j.key, j.dst); err != nil {
				err = fmt.Errorf("replicate %s from %s to %s: %w", j.key, j.src, j.dst, err)
				callErr.CompareAndSwap(nil, &err)
				if j.finish() {
					r.ended.Add(1)
				}
				return
			}
			select {
			case <-j.done:
			case <-ctx.Done():
			}
		})
		if i == len(order)-1 && cfg.Duration > 0 && cfg.Count == 0 {
			stopped = "key pool exhausted"
		}
	}
	launchEnd := time.Now()
	phase.Store("drain")
	wg.Wait()
	cpu1, srv1 := r.cpu(), r.serverCPU()
	stop()
	gc1, sched1 := readGC(), schedLatencies()
	if e := callErr.Load(); e != nil {
		return *e
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("run did not finish within --timeout %s: %d of %d replications ended (raise --timeout or lower --count/--duration): %w",
			cfg.Timeout, r.ended.Load(), r.started.Load(), err)
	}
	// The usable events of the last runs may trail their confirmations.
	waitUsable(order[:r.started.Load()], 2*time.Second)

	res.StoppedBy = stopped
	res.Started = int(r.started.Load())
	res.LaunchSeconds = launchEnd.Sub(start).Seconds()
	res.CPUSeconds = (cpu1 - cpu0).Seconds()
	res.ServerCPUSeconds = (srv1 - srv0).Seconds()
	res.GCCycles = gc1.cycles - gc0.cycles
	res.GCCPUSeconds = gc1.cpu - gc0.cpu
	res.PeakHeapLiveBytes = max(live.get(), gc1.live)
	if w := schedWaitBetween(sched0, sched1); w.Count > 0 {
		res.SchedWait = &SchedWait{P50MS: w.P50, P99MS: w.P99, P999MS: w.P999, Count: w.Count}
	}
	sampleMu.Lock()
	samples = append(samples, cpuSample{int(r.ended.Load()), cpu1})
	res.CPUMSPerReplicationByDecile = deciles(samples, res.Started)
	sampleMu.Unlock()
	return nil
}

func waitUsable(jobs []*job, max time.Duration) {
	deadline := time.Now().Add(max)
	for _, j := range jobs {
		for j.usable.Load() == 0 && j.failed.Load() == nil && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
}
