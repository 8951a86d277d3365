//go:build unix

package sqlite

import (
	"syscall"
	"time"
)

// cpuTime is the user+system CPU time this process has used. Benchmarks
// report it per op because wall time swings on a shared machine.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
