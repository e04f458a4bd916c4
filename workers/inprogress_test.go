package workers

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// progressMsg counts InProgress calls; nothing else of it is used.
type progressMsg struct {
	jetstream.Msg
	n atomic.Int32
}

func (m *progressMsg) InProgress() error { m.n.Add(1); return nil }

func TestKeepInProgress(t *testing.T) {
	const interval = 20 * time.Millisecond
	// A handler done within the interval sends nothing.
	fast := &progressMsg{}
	keepInProgress(fast, interval)()
	time.Sleep(3 * interval)
	if n := fast.n.Load(); n != 0 {
		t.Errorf("fast handler: %d InProgress, want 0", n)
	}
	// A slow one sends one per interval while it runs, none after.
	slow := &progressMsg{}
	stop := keepInProgress(slow, interval)
	time.Sleep(5*interval + interval/2)
	stop()
	n := slow.n.Load()
	if n < 2 || n > 5 {
		t.Errorf("slow handler: %d InProgress in 5.5 intervals, want about 5", n)
	}
	time.Sleep(3 * interval)
	if m := slow.n.Load(); m != n {
		t.Errorf("InProgress after stop: %d, then %d", n, m)
	}
}
