package queue_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// TestWakeOnEvents: a wake made for a job wakes at the job's events and
// not at another job's, and a wake on the final event ignores progress.
func TestWakeOnEvents(t *testing.T) {
	t.Parallel()
	q, n := setup(t)
	ctx := testenv.Context(t, 20*time.Second)
	all, err := q.WakeOnEvents("j")
	require.NoError(t, err)
	defer all.Stop()
	final, err := q.WakeOnFinal("j")
	require.NoError(t, err)
	defer final.Stop()
	other, err := q.WakeOnEvents("k")
	require.NoError(t, err)
	defer other.Stop()

	// Another connection publishes: the wakes were in place on the server
	// when they were made, without a flush of the caller's own.
	nc, _ := n.Connect(t)
	pub, err := queue.New(nc)
	require.NoError(t, err)
	publish := func(ev *proto.Event) {
		ev.JobID = "j"
		require.NoError(t, pub.PublishEventNoWait(ev))
	}
	publish(&proto.Event{Type: proto.EventProgress, Progress: &proto.Progress{Value: 1, Max: 2}})
	require.NoError(t, all.Wait(ctx), "woken by the job's progress")
	publish(&proto.Event{Type: proto.EventStream, Output: []byte(`"chunk"`)})
	require.NoError(t, all.Wait(ctx), "and by its stream chunk")
	require.NoError(t, nc.Flush())
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, final.Wait(short), context.DeadlineExceeded, "progress does not wake a final waiter")
	require.ErrorIs(t, other.Wait(short), context.DeadlineExceeded, "nor another job's waiter")

	publish(&proto.Event{Type: proto.EventStatus, Status: proto.StatusCompleted})
	require.NoError(t, final.Wait(ctx))
	all.Stop()
	all.Stop() // idempotent
}

// TestWakeAfterReconnect: events published while the connection was down
// are missed by a core subscription, so a reconnection wakes the waiter,
// which then reads the job again.
func TestWakeAfterReconnect(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	nc, err := nats.Connect(n.URL, nats.MaxReconnects(-1), nats.ReconnectWait(10*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	q, err := queue.New(nc)
	require.NoError(t, err)
	w, err := q.WakeOnFinal("j")
	require.NoError(t, err)
	defer w.Stop()
	ctx := testenv.Context(t, 20*time.Second)

	// The connection drops and comes back.
	require.NoError(t, nc.ForceReconnect())
	require.NoError(t, w.Wait(ctx), "the reconnection wakes the waiter")
}

// BenchmarkWaiters measures what a held long-poll costs the API process
// (and the NATS server beside it, which runs in this process too) with
// each way of waking it. "per-waiter" is queue.Wake, one core
// subscription on the job's events, made (with a round trip, so that no
// event is missed) and removed per request; "per-waiter-new" is the same
// for a job the waiter's own connection submits (/runsync), which needs no
// round trip; "shared" is one subscription per process on every job's
// events, fanned out to the waiters by job id. Each operation makes a
// waiter, publishes n events of other jobs (the rest of the fleet's
// traffic, which the shared subscription receives and drops) and one of
// its job, waits for the wake-up and removes the waiter. cpu-ns/op is the
// process's CPU time per operation.
//
// Measured on the development machine (2 shared cores, -benchtime 3000x,
// median of 3), CPU µs per waiter:
//
//	others             0    20   100
//	per-waiter       150   280   440
//	per-waiter-new    95   135   275
//	shared            58   200   450
//
// Publishing an event nobody waits for costs ~3 µs here in both; the
// shared subscription adds ~1 µs for each (it receives and drops it), and
// saves ~90 µs per waiter (~40 µs for /runsync) of subscribing,
// unsubscribing and the round trip. So shared wins while a process's
// waiters are matched by fewer than about 90 (40) events of jobs nobody
// waits for, and it costs the process every event of the fleet even when
// nobody waits. A fleet's batch traffic and progress events far outnumber
// its long-polls, so the API uses queue.Wake: its cost follows the
// requests it serves, not the traffic of the fleet.
func BenchmarkWaiters(b *testing.B) {
	for _, others := range []int{0, 20, 100} {
		b.Run(fmt.Sprintf("per-waiter/others=%d", others), func(b *testing.B) {
			benchWaiters(b, others, false, func(q *queue.Client, _ *nats.Conn) waiterFactory {
				return func(id string) (func(context.Context) error, func()) {
					w, err := q.WakeOnEvents(id)
					if err != nil {
						b.Fatal(err)
					}
					return w.Wait, w.Stop
				}
			})
		})
		b.Run(fmt.Sprintf("per-waiter-new/others=%d", others), func(b *testing.B) {
			benchWaiters(b, others, true, func(q *queue.Client, _ *nats.Conn) waiterFactory {
				return func(id string) (func(context.Context) error, func()) {
					w, err := q.WakeOnFinalOfNew(id)
					if err != nil {
						b.Fatal(err)
					}
					return w.Wait, w.Stop
				}
			})
		})
		b.Run(fmt.Sprintf("shared/others=%d", others), func(b *testing.B) {
			benchWaiters(b, others, false, func(_ *queue.Client, nc *nats.Conn) waiterFactory {
				f := newFanout(b, nc)
				return f.add
			})
		})
	}
}

type waiterFactory func(id string) (wait func(context.Context) error, stop func())

// benchWaiters runs one variant of BenchmarkWaiters; own publishes the
// waited job's event (a final one) on the waiter's connection, as a job
// the waiter submitted.
func benchWaiters(b *testing.B, others int, own bool, mk func(*queue.Client, *nats.Conn) waiterFactory) {
	n := testenv.StartNATS(b)
	q, err := queue.New(n.Conn)
	if err != nil {
		b.Fatal(err)
	}
	pub, _ := n.Connect(b)
	mine, class := pub, proto.EventClassProgress
	if own {
		mine, class = n.Conn, proto.EventClassFinal
	}
	add := mk(q, n.Conn)
	ctx := context.Background()
	data := []byte(`{"v":1,"job_id":"x","type":"progress","progress":{"node":"3","value":1,"max":20,"percent":5}}`)
	start := cpuTime()
	b.ResetTimer()
	for i := range b.N {
		id := fmt.Sprintf("job-%d", i)
		wait, stop := add(id)
		for k := range others {
			_ = pub.Publish(proto.EventSubject(fmt.Sprintf("other-%d-%d", i, k), proto.EventClassProgress, proto.DefaultTenant), data)
		}
		_ = mine.Publish(proto.EventSubject(id, class, proto.DefaultTenant), data)
		if err := wait(ctx); err != nil {
			b.Fatal(err)
		}
		stop()
	}
	b.StopTimer()
	b.ReportMetric(float64((cpuTime()-start).Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// fanout is the shared alternative: one subscription on every job's
// events, fanned out by the job id in the subject.
type fanout struct {
	mu      sync.Mutex
	waiters map[string]chan struct{}
}

func newFanout(b *testing.B, nc *nats.Conn) *fanout {
	f := &fanout{waiters: map[string]chan struct{}{}}
	sub, err := nc.Subscribe(proto.EventSubjects, func(m *nats.Msg) {
		id := strings.TrimPrefix(m.Subject, "cf.events.")
		id = id[:strings.LastIndexByte(id, '.')]
		f.mu.Lock()
		c := f.waiters[id]
		f.mu.Unlock()
		if c != nil {
			select {
			case c <- struct{}{}:
			default:
			}
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sub.Unsubscribe() })
	return f
}

func (f *fanout) add(id string) (func(context.Context) error, func()) {
	c := make(chan struct{}, 1)
	f.mu.Lock()
	f.waiters[id] = c
	f.mu.Unlock()
	wait := func(ctx context.Context) error {
		select {
		case <-c:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	stop := func() {
		f.mu.Lock()
		delete(f.waiters, id)
		f.mu.Unlock()
	}
	return wait, stop
}

// cpuTime is the CPU time this process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
