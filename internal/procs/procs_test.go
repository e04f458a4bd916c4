package procs

import (
	"runtime"
	"testing"
)

func TestProcsFor(t *testing.T) {
	for _, c := range []struct {
		env                 string
		start, numCPU, want int
	}{
		{"", 2, 2, 4},
		{"", 1, 1, 2},
		{"", 16, 16, 32},
		{"2", 2, 2, 2}, // the operator's value stays
		{"1", 1, 2, 1}, // also below the CPUs
		{"", 2, 8, 2},  // a cgroup quota of 2 on 8 CPUs: not oversubscribed
		{"8", 8, 2, 8}, // the operator may oversubscribe by hand
	} {
		if got := procsFor(c.env, c.start, c.numCPU); got != c.want {
			t.Errorf("procsFor(%q, %d, %d CPUs) = %d, want %d", c.env, c.start, c.numCPU, got, c.want)
		}
	}
}

func TestOversubscribe(t *testing.T) {
	prev := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	t.Setenv("GOMAXPROCS", "")
	want := PerCore * Cores()
	if Cores() < runtime.NumCPU() {
		want = Cores() // under a CPU quota
	}
	if n := Oversubscribe(); n != want || runtime.GOMAXPROCS(0) != n {
		t.Errorf("Oversubscribe() = %d, GOMAXPROCS %d; want both %d (%d cores, %d CPUs)", n, runtime.GOMAXPROCS(0), want, Cores(), runtime.NumCPU())
	}
	// Nothing in this test binary changed GOMAXPROCS before this test.
	if Cores() != prev {
		t.Errorf("Cores() = %d after Oversubscribe, want the starting %d", Cores(), prev)
	}
}
