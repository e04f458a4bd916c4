//go:build !unix

package bench

import "time"

// processCPU is not measured on this platform: CPU figures read 0.
func processCPU() time.Duration { return 0 }

// peakRSS is not measured on this platform: it reads 0.
func peakRSS() uint64 { return 0 }

// loadAverage is not measured on this platform: it reads 0.
func loadAverage() float64 { return 0 }

// procPeakRSS is not measured on this platform: it reads 0.
func procPeakRSS(int) uint64 { return 0 }

// procCPU is not measured on this platform: it reads 0.
func procCPU(int) time.Duration { return 0 }
