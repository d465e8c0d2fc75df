package dispatch_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/dispatch"
	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// The sweeper is the lifecycle core's (lifecycle.Sweeper); every
// dispatcher runs one, and these tests drive it through the dispatcher's
// Sweep, as an operator's nudge does.

// sweeper is a dispatcher that is not started: tests call Sweep.
func (b *bundle) sweeper(t *testing.T, cfg dispatch.Config) *dispatch.Dispatcher {
	t.Helper()
	d, err := dispatch.New(cfg, b.q, b.core, dispatch.Admission{}, zaptest.NewLogger(t))
	require.NoError(t, err)
	return d
}

func jobBody(id, policy string) string {
	return fmt.Sprintf(`{"v":1,"id":%q,"input":{"workflow":%s},"policy":%s}`, id, workflow, policy)
}

// sweepUntil sweeps with d until ok holds for the job's record.
func (b *bundle) sweepUntil(t *testing.T, d *dispatch.Dispatcher, id string, ok func(*proto.Record) bool) *proto.Record {
	t.Helper()
	var rec *proto.Record
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if !assert.NoError(c, d.Sweep(ctx)) {
			return
		}
		r, err := b.db.Get(ctx, id)
		if !assert.NoError(c, err) {
			return
		}
		rec = r
		assert.True(c, ok(r), "record of %s: %s", id, r.Status)
	}, 5*time.Second, 5*time.Millisecond)
	require.NotNil(t, rec)
	require.True(t, ok(rec), "record of %s: %s", id, rec.Status)
	return rec
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
	require.Equal(t, proto.MsgTTLExpired, rec.Error)
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
	due, err := b.db.DueTTL(ctx, 10)
	require.NoError(t, err)
	require.NotContains(t, due, "ttl-1")
}

// claim plays a worker that takes the job, leases it for ttl with an
// execution timeout of exec, and then goes silent.
func (b *bundle) claim(t *testing.T, id string, ttl, exec time.Duration) (*queue.Consumer, *lifecycle.Claim) {
	t.Helper()
	ctx := testenv.Context(t, 10*time.Second)
	rec, err := b.db.Get(ctx, id)
	require.NoError(t, err)
	cons, err := b.q.LaneConsumer(ctx, rec.Pool, rec.Lane, queue.ConsumerConfig{AckWait: time.Minute})
	require.NoError(t, err)
	msg, err := cons.Next(ctx, 5*time.Second)
	require.NoError(t, err)
	job, err := proto.DecodeJob(msg.Data())
	require.NoError(t, err)
	cl, err := b.core.Claim(ctx, msg, job, lifecycle.Holder{WorkerID: "w-dead", LeaseTTL: ttl, ExecTimeout: exec})
	require.NoError(t, err)
	return cons, cl
}

func TestSweepHandsBackTheJobOfASilentWorkerAtOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	ctx := testenv.Context(t, 20*time.Second)
	d := b.sweeper(t, dispatch.Config{})
	b.admit(t, d, "lost-1")
	cons, _ := b.claim(t, "lost-1", time.Millisecond, time.Hour)
	rec := b.sweepUntil(t, d, "lost-1", func(r *proto.Record) bool { return r.Status == proto.StatusInQueue })
	require.Equal(t, 1, rec.Retries)
	require.Equal(t, 1, rec.Attempt)
	errs, err := b.db.AttemptErrors(ctx, "lost-1")
	require.NoError(t, err)
	require.Equal(t, []string{"attempt 1: " + proto.MsgLeaseLapsed}, errs)
	// Redelivered long before the consumer's AckWait of a minute.
	msg, err := cons.Next(ctx, 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, 2, msg.Delivered())
	job, err := proto.DecodeJob(msg.Data())
	require.NoError(t, err)
	cl, err := b.core.Claim(ctx, msg, job, lifecycle.Holder{WorkerID: "w-2", LeaseTTL: time.Minute})
	require.NoError(t, err)
	require.Equal(t, 2, cl.Attempt, "the lost attempt counts")
	require.Equal(t, 1, cl.Failures)
	require.NoError(t, b.core.Finish(ctx, cl, lifecycle.Result{Status: proto.StatusCompleted, Output: json.RawMessage(`{"images":[]}`)}))
}

func TestSweepTimesOutASilentWorkersJobPastItsDeadline(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	ctx := testenv.Context(t, 20*time.Second)
	d := b.sweeper(t, dispatch.Config{Sweeper: lifecycle.SweeperConfig{ExecutionGrace: time.Millisecond}})
	b.admit(t, d, "late-1")
	// The lease outlives the deadline and its grace, so the first sweep
	// that finds it lapsed finds the deadline passed too.
	cons, _ := b.claim(t, "late-1", 50*time.Millisecond, time.Millisecond)
	rec := b.sweepUntil(t, d, "late-1", func(r *proto.Record) bool { return r.Status == proto.StatusTimedOut })
	require.Equal(t, proto.MsgWorkerSilent, rec.Error)
	// The delivery was acked on the worker's behalf: nothing comes back.
	require.Eventually(t, func() bool {
		n, err := cons.Pending(ctx)
		return err == nil && n == 0 && b.streamMsgs(t, proto.JobsStream) == 0
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
		b.claim(t, fmt.Sprintf("twice-%d", i), time.Millisecond, time.Hour)
	}
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		errs := make(chan error, 2)
		go func() { errs <- d1.Sweep(ctx) }()
		go func() { errs <- d2.Sweep(ctx) }()
		assert.NoError(c, <-errs)
		assert.NoError(c, <-errs)
		left, err := b.db.LapsedLeases(ctx, 100)
		assert.NoError(c, err)
		assert.Empty(c, left)
	}, 5*time.Second, 5*time.Millisecond)
	for i := range n {
		rec, err := b.db.Get(ctx, fmt.Sprintf("twice-%d", i))
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
	_, err := b.q.Submit(ctx, "cli", job)
	require.NoError(t, err)
	cons, err := b.q.IntakeConsumer(ctx, queue.ConsumerConfig{})
	require.NoError(t, err)
	msg, err := cons.Next(ctx, 5*time.Second)
	require.NoError(t, err)
	require.NoError(t, d.Admit(ctx, msg))
	b.waitRecord(t, id, func(r *proto.Record) bool { return r.Status == proto.StatusInQueue })
}
