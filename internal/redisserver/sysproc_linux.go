package redisserver

import "syscall"

// sysProcAttr puts redis-server in its own process group, so a Ctrl-C in
// the terminal reaches only the parent, which then stops it in order; and
// asks the kernel to send it SIGTERM (on which it writes out its
// append-only file and exits) when the parent dies, even by SIGKILL.
//
// Pdeathsig fires when the OS thread that started the child exits, not the
// process: launch starts the child from a goroutine locked to its thread
// until the child exits.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
