//go:build unix

package bench

import (
	"syscall"
	"time"
)

// processCPU is the user and system CPU time this process has used so
// far (getrusage RUSAGE_SELF: every thread, so every part of an
// in-process stack).
func processCPU() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
