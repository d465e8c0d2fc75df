package dispatch_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/dispatch"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/status"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// sweeper is a dispatcher that is not started: tests call Sweep.
func (b *bundle) sweeper(t *testing.T, cfg dispatch.Config) *dispatch.Dispatcher {
	t.Helper()
	d, err := dispatch.New(cfg, b.q, b.store, zaptest.NewLogger(t))
	require.NoError(t, err)
	return d
}

func jobBody(id, policy string) string {
	return fmt.Sprintf(`{"v":1,"id":%q,"input":{"workflow":%s},"policy":%s}`, id, workflow, policy)
}

func TestSweepTimesOutJobsQueuedPastTheirTTL(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	ctx := testenv.Context(t, 20*time.Second)
	events := make(chan *proto.Event, 10)
	stop, err := b.q.SubscribeEvents("ttl-1", func(ev *proto.Event) { events <- ev })
	require.NoError(t, err)
	defer stop()
	b.submit(t, "cli", jobBody("ttl-1", `{"ttl":1}`), "ttl-1")
	b.submit(t, "cli", jobBody("ttl-long", `{"ttl":600000}`), "ttl-long")
	// The started replica's sweeper times it out; so may this one.
	rec := b.waitRecord(t, "ttl-1", func(r *proto.Record) bool { return r.Status == proto.StatusTimedOut })
	require.Equal(t, dispatch.TTLExpiredMessage, rec.Error)
	require.NoError(t, b.sweeper(t, dispatch.Config{}).Sweep(ctx))
	long := b.waitRecord(t, "ttl-long", func(r *proto.Record) bool { return r.Status == proto.StatusInQueue })
	require.Equal(t, proto.StatusInQueue, long.Status)
	seen := map[proto.Status]int{}
	deadline := time.After(5 * time.Second)
	for seen[proto.StatusTimedOut] == 0 {
		select {
		case ev := <-events:
			seen[ev.Status]++
		case <-deadline:
			t.Fatalf("no TIMED_OUT event; saw %v", seen)
		}
	}
	// The index forgets it: another sweep changes nothing.
	due, err := b.store.DueTTL(ctx, 10)
	require.NoError(t, err)
	require.NotContains(t, due, "ttl-1")
}

// claim plays a worker that takes the job, leases it for ttl and then
// goes silent.
func (b *bundle) claim(t *testing.T, id string, ttl time.Duration, deadline time.Time) (*queue.Consumer, *queue.Message) {
	t.Helper()
	ctx := testenv.Context(t, 10*time.Second)
	rec, err := b.store.Get(ctx, id)
	require.NoError(t, err)
	cons, err := b.q.LaneConsumer(ctx, rec.Pool, rec.Lane, queue.ConsumerConfig{AckWait: time.Minute})
	require.NoError(t, err)
	msg, err := cons.Next(ctx, 5*time.Second)
	require.NoError(t, err)
	attempt, _, err := b.store.Claim(ctx, id, "w-dead")
	require.NoError(t, err)
	require.NoError(t, b.store.Lease(ctx, status.Lease{JobID: id, Attempt: attempt, WorkerID: "w-dead", Reply: msg.Reply(), Deadline: deadline}, ttl))
	return cons, msg
}

func TestSweepHandsBackTheJobOfASilentWorkerAtOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	ctx := testenv.Context(t, 20*time.Second)
	d := b.sweeper(t, dispatch.Config{})
	b.admit(t, d, "lost-1")
	cons, _ := b.claim(t, "lost-1", time.Millisecond, time.Now().Add(time.Hour))
	require.Eventually(t, func() bool {
		require.NoError(t, d.Sweep(ctx))
		rec, err := b.store.Get(ctx, "lost-1")
		require.NoError(t, err)
		return rec.Status == proto.StatusInQueue
	}, 5*time.Second, 5*time.Millisecond)
	rec, err := b.store.Get(ctx, "lost-1")
	require.NoError(t, err)
	require.Equal(t, 1, rec.Retries)
	require.Equal(t, 1, rec.Attempt)
	errs, err := b.store.AttemptErrors(ctx, "lost-1")
	require.NoError(t, err)
	require.Len(t, errs, 1)
	require.Contains(t, errs[0], "worker w-dead stopped renewing its lease")
	// Redelivered long before the consumer's AckWait of a minute.
	msg, err := cons.Next(ctx, 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, 2, msg.Delivered())
	attempt, _, err := b.store.Claim(ctx, "lost-1", "w-2")
	require.NoError(t, err)
	require.Equal(t, 2, attempt, "the lost attempt counts")
	require.NoError(t, msg.Ack(ctx))
}

func TestSweepTimesOutASilentWorkersJobPastItsDeadline(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	ctx := testenv.Context(t, 20*time.Second)
	d := b.sweeper(t, dispatch.Config{ExecutionGrace: time.Millisecond})
	b.admit(t, d, "late-1")
	cons, _ := b.claim(t, "late-1", time.Millisecond, time.Now().Add(-time.Second))
	require.Eventually(t, func() bool {
		require.NoError(t, d.Sweep(ctx))
		rec, err := b.store.Get(ctx, "late-1")
		require.NoError(t, err)
		return rec.Status == proto.StatusTimedOut
	}, 5*time.Second, 5*time.Millisecond)
	// The delivery was acked on the worker's behalf: nothing comes back.
	require.Eventually(t, func() bool {
		n, err := cons.Pending(ctx)
		require.NoError(t, err)
		return n == 0 && b.streamMsgs(t, proto.JobsStream) == 0
	}, 5*time.Second, 10*time.Millisecond)
}

func TestSweepersOfTwoReplicasHandBackOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	ctx := testenv.Context(t, 20*time.Second)
	d1, d2 := b.sweeper(t, dispatch.Config{}), b.sweeper(t, dispatch.Config{})
	const n = 20
	for i := range n {
		b.admit(t, d1, fmt.Sprintf("twice-%d", i))
	}
	for i := range n {
		b.claim(t, fmt.Sprintf("twice-%d", i), time.Millisecond, time.Now().Add(time.Hour))
	}
	require.Eventually(t, func() bool {
		errs := make(chan error, 2)
		go func() { errs <- d1.Sweep(ctx) }()
		go func() { errs <- d2.Sweep(ctx) }()
		require.NoError(t, <-errs)
		require.NoError(t, <-errs)
		left, err := b.store.ExpiredLeases(ctx, 100)
		require.NoError(t, err)
		return len(left) == 0
	}, 5*time.Second, 5*time.Millisecond)
	for i := range n {
		rec, err := b.store.Get(ctx, fmt.Sprintf("twice-%d", i))
		require.NoError(t, err)
		require.Equal(t, proto.StatusInQueue, rec.Status)
		require.Equal(t, 1, rec.Retries, "handed back once")
	}
}

// admit runs one submission through d.Admit.
func (b *bundle) admit(t *testing.T, d *dispatch.Dispatcher, id string) {
	t.Helper()
	ctx := testenv.Context(t, 10*time.Second)
	job := &proto.Job{ID: id, Input: json.RawMessage(fmt.Sprintf(`{"workflow":%s}`, workflow))}
	require.NoError(t, b.q.Submit(ctx, "cli", job))
	cons, err := b.q.IntakeConsumer(ctx, queue.ConsumerConfig{})
	require.NoError(t, err)
	msg, err := cons.Next(ctx, 5*time.Second)
	require.NoError(t, err)
	require.NoError(t, d.Admit(ctx, msg))
	b.waitRecord(t, id, func(r *proto.Record) bool { return r.Status == proto.StatusInQueue })
}

var _ = context.Background

func TestSweepRedeliversAtOnceWhenAWorkerDiesBeforeItsClaim(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	ctx := testenv.Context(t, 20*time.Second)
	d := b.sweeper(t, dispatch.Config{})
	b.admit(t, d, "early-1")
	rec, err := b.store.Get(ctx, "early-1")
	require.NoError(t, err)
	cons, err := b.q.LaneConsumer(ctx, rec.Pool, rec.Lane, queue.ConsumerConfig{AckWait: time.Minute})
	require.NoError(t, err)
	msg, err := cons.Next(ctx, 5*time.Second)
	require.NoError(t, err)
	// Leased on arrival (attempt 0), never claimed.
	require.NoError(t, b.store.Lease(ctx, status.Lease{JobID: "early-1", WorkerID: "w-dead", Reply: msg.Reply()}, time.Millisecond))
	require.Eventually(t, func() bool {
		require.NoError(t, d.Sweep(ctx))
		left, err := b.store.ExpiredLeases(ctx, 10)
		require.NoError(t, err)
		return len(left) == 0
	}, 5*time.Second, 5*time.Millisecond)
	again, err := cons.Next(ctx, 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, 2, again.Delivered())
	rec, err = b.store.Get(ctx, "early-1")
	require.NoError(t, err)
	require.Equal(t, proto.StatusInQueue, rec.Status)
	require.Zero(t, rec.Retries, "it never started: no retry counted")
	require.NoError(t, again.Ack(ctx))
}
