//go:build !linux

package redisserver

import "syscall"

// sysProcAttr puts redis-server in its own process group, so a Ctrl-C in
// the terminal reaches only the parent, which then stops it in order. Only
// Linux can also tie the child's life to the parent's (Pdeathsig): here a
// parent killed by SIGKILL leaves redis-server running.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
