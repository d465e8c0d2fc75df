// Command healthcheck is the container health probe of comfyfleet's images.
// Docker runs it inside the container it checks (compose `healthcheck`,
// Dockerfile `HEALTHCHECK`), so it reads the same environment as the
// service and sees the service's own network namespace. It exits 0 when
// healthy and 1 when not, and prints one line saying why.
//
//	healthcheck http URL   the URL answers 2xx (with the first of API_KEYS /
//	                       API_KEYS_FILE as a bearer key when set)
//	healthcheck backends   this container holds live TCP connections to the
//	                       NATS server of NATS_URL and the Redis of REDIS_URL
//	healthcheck worker     the heartbeat of WORKER_ID (default: the host name,
//	                       as gpuworker's) is in Redis and not "unhealthy",
//	                       and the NATS connection is live
//
// The dispatcher serves no port of its own, so its health is its live
// connections to its backends, read from /proc/net/tcp of its own network
// namespace: a process that lost NATS or Redis has none while it redials.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Getenv, os.Stdout))
}

const usage = `usage: healthcheck [-timeout D] http URL | backends | worker`

// run probes and returns the exit code: 0 healthy, 1 unhealthy, 2 misuse.
func run(ctx context.Context, args []string, getenv func(string) string, out io.Writer) int {
	timeout := 3 * time.Second
	if len(args) >= 2 && args[0] == "-timeout" {
		d, err := time.ParseDuration(args[1])
		if err != nil || d <= 0 {
			fmt.Fprintf(out, "healthcheck: -timeout %q is not a positive duration\n", args[1])
			return 2
		}
		timeout, args = d, args[2:]
	}
	if len(args) == 0 {
		fmt.Fprintln(out, usage)
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	p := prober{getenv: getenv, procRoot: "/proc", hostname: os.Hostname}
	var err error
	switch {
	case args[0] == "http" && len(args) == 2:
		err = p.http(ctx, args[1])
	case args[0] == "backends" && len(args) == 1:
		err = p.backends(ctx)
	case args[0] == "worker" && len(args) == 1:
		err = p.worker(ctx)
	default:
		fmt.Fprintln(out, usage)
		return 2
	}
	if err != nil {
		fmt.Fprintf(out, "unhealthy: %v\n", err)
		return 1
	}
	fmt.Fprintln(out, "healthy")
	return 0
}
