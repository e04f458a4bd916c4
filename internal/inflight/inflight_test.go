package inflight

import (
	"sync/atomic"
	"testing"
)

func TestGroupWaitsThenRefuses(t *testing.T) {
	var g Group
	var done atomic.Int32
	release := make(chan struct{})
	for range 3 {
		if !g.Go(func() { <-release; done.Add(1) }) {
			t.Fatal("refused before Close")
		}
	}
	closed := make(chan struct{})
	go func() { g.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned with work in flight")
	default:
	}
	close(release)
	<-closed
	if done.Load() != 3 {
		t.Fatalf("%d of 3 finished when Close returned", done.Load())
	}
	if g.Go(func() { t.Error("ran after Close") }) {
		t.Error("accepted after Close")
	}
}

// TestGroupConcurrentGoAndClose is for the race detector: Go and Close at
// once never race (a bare WaitGroup's Add and Wait would).
func TestGroupConcurrentGoAndClose(t *testing.T) {
	for range 100 {
		var g Group
		start := make(chan struct{})
		go func() {
			<-start
			for range 10 {
				g.Go(func() {})
			}
		}()
		close(start)
		g.Close()
	}
}
