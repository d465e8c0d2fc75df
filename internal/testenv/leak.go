package testenv

import "go.uber.org/goleak"

// LeakOptions are the goroutines goleak must not count against a test
// package that uses the servers of this package: the in-process NATS
// server's and go-redis's own, and one known nats.go bug.
func LeakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).startGoRoutine.func1"),
		goleak.IgnoreTopFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).reaper"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		// nats.go v1.55: ObjectStore.Put's deferred cleanup can clear the
		// channel that the goroutine it started reads, which then waits on
		// a nil channel for ever (about one Put in ten).
		goleak.IgnoreAnyFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect"),
	}
}
