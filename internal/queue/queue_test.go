package queue_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

func setup(t *testing.T) (*queue.Client, *testenv.NATS) {
	t.Helper()
	n := testenv.StartNATS(t)
	q, err := queue.New(n.Conn)
	require.NoError(t, err)
	require.NoError(t, q.Ensure(testenv.Context(t, 10*time.Second), queue.Config{}))
	return q, n
}

func job(id string, lane proto.Lane) *proto.Job {
	return &proto.Job{ID: id, Input: json.RawMessage(`{"workflow":{}}`), Pool: "p", Lane: lane}
}

// publishJob puts an admitted job on its pool's lane under its id, as
// admission does.
func publishJob(ctx context.Context, q *queue.Client, j *proto.Job) error {
	return q.PublishJob(ctx, j, j.ID)
}

func TestEnsureIsIdempotent(t *testing.T) {
	t.Parallel()
	q, n := setup(t)
	ctx := testenv.Context(t, 10*time.Second)
	require.NoError(t, q.Ensure(ctx, queue.Config{}))
	for _, name := range []string{proto.SubmitStream, proto.JobsStream, proto.EventsStream, proto.DLQStream, proto.PreviewStream} {
		_, err := n.JS.Stream(ctx, name)
		require.NoError(t, err, name)
	}
}

func TestSubmitIsIdempotentByID(t *testing.T) {
	t.Parallel()
	q, n := setup(t)
	ctx := testenv.Context(t, 10*time.Second)
	seq, err := q.Submit(ctx, proto.SourceBatch, job("a", ""))
	require.NoError(t, err)
	require.NotZero(t, seq, "the submission's intake sequence")
	again, err := q.Submit(ctx, proto.SourceBatch, job("a", ""))
	require.ErrorIs(t, err, queue.ErrDuplicate)
	require.Equal(t, seq, again, "a duplicate names the submission it repeats")
	s, err := n.JS.Stream(ctx, proto.SubmitStream)
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, info.State.Msgs)
}

// TestPublishJobDedupesByMessageID: an admitted job is stored once per
// message id, so a retry (published under a new id) is a new message and
// a repeated publish of the same id is not.
func TestPublishJobDedupesByMessageID(t *testing.T) {
	t.Parallel()
	q, n := setup(t)
	ctx := testenv.Context(t, 10*time.Second)
	tests := []struct {
		name    string
		msgID   string
		wantErr error
	}{
		{name: "admitted", msgID: "a"},
		{name: "admitted again", msgID: "a", wantErr: queue.ErrDuplicate},
		{name: "retried", msgID: "a.retry.1"},
		{name: "replayed", msgID: "a.replay.7"},
	}
	for _, tt := range tests {
		err := q.PublishJob(ctx, job("a", proto.LaneBatch), tt.msgID)
		if tt.wantErr != nil {
			require.ErrorIs(t, err, tt.wantErr, tt.name)
			continue
		}
		require.NoError(t, err, tt.name)
	}
	s, err := n.JS.Stream(ctx, proto.JobsStream)
	require.NoError(t, err)
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(proto.JobSubject("p", proto.LaneBatch)))
	require.NoError(t, err)
	require.EqualValues(t, 3, info.State.Msgs)
	require.EqualValues(t, 3, info.State.Subjects[proto.JobSubject("p", proto.LaneBatch)], "on the job's pool and lane")
}

// waitPending waits until pool p's lane consumers see the given numbers of
// waiting messages.
func waitPending(t *testing.T, n *testenv.NATS, want map[proto.Lane]uint64) {
	t.Helper()
	require.Eventually(t, func() bool {
		for lane, w := range want {
			c, err := n.JS.Consumer(context.Background(), proto.JobsStream, "pool-p-"+string(lane))
			if err != nil {
				return false
			}
			info, err := c.Info(context.Background())
			if err != nil || info.NumPending != w {
				return false
			}
		}
		return true
	}, 10*time.Second, 5*time.Millisecond)
}

func TestLanesPutInteractiveFirst(t *testing.T) {
	t.Parallel()
	q, n := setup(t)
	ctx := testenv.Context(t, 30*time.Second)
	lanes, err := q.OpenLanes(ctx, "p", queue.LanesConfig{BatchEvery: -1})
	require.NoError(t, err)
	for i := range 3 {
		require.NoError(t, publishJob(ctx, q, job(fmt.Sprintf("b%d", i), proto.LaneBatch)))
	}
	require.NoError(t, publishJob(ctx, q, job("i0", proto.LaneInteractive)))
	// Priority applies to jobs the lanes' consumers already see; a consumer
	// learns of a stored message asynchronously.
	waitPending(t, n, map[proto.Lane]uint64{proto.LaneInteractive: 1, proto.LaneBatch: 3})

	var order []string
	for range 4 {
		m, err := lanes.Next(ctx, time.Second)
		require.NoError(t, err)
		j, err := proto.DecodeJob(m.Data())
		require.NoError(t, err)
		order = append(order, j.ID)
		require.NoError(t, m.Ack(ctx))
	}
	require.Equal(t, []string{"i0", "b0", "b1", "b2"}, order, "interactive first, then batch in order")

	_, err = lanes.Next(ctx, 150*time.Millisecond)
	require.ErrorIs(t, err, queue.ErrNoMessage)
}

func TestLanesKeepBatchMoving(t *testing.T) {
	t.Parallel()
	q, n := setup(t)
	ctx := testenv.Context(t, 30*time.Second)
	lanes, err := q.OpenLanes(ctx, "p", queue.LanesConfig{BatchEvery: 3})
	require.NoError(t, err)
	require.NoError(t, publishJob(ctx, q, job("b", proto.LaneBatch)))
	for i := range 5 {
		require.NoError(t, publishJob(ctx, q, job(fmt.Sprintf("i%d", i), proto.LaneInteractive)))
	}
	waitPending(t, n, map[proto.Lane]uint64{proto.LaneInteractive: 5, proto.LaneBatch: 1})
	var order []string
	for range 6 {
		m, err := lanes.Next(ctx, time.Second)
		require.NoError(t, err)
		j, _ := proto.DecodeJob(m.Data())
		order = append(order, j.ID)
		require.NoError(t, m.Ack(ctx))
	}
	require.Equal(t, "b", order[2], "the third take looks at batch first: %v", order)
}

func TestIdleWorkerTakesBatchJobPublishedLater(t *testing.T) {
	t.Parallel()
	q, _ := setup(t)
	ctx := testenv.Context(t, 30*time.Second)
	lanes, err := q.OpenLanes(ctx, "p", queue.LanesConfig{})
	require.NoError(t, err)
	got := make(chan string, 1)
	go func() {
		m, err := lanes.Next(ctx, 10*time.Second)
		if err != nil {
			got <- err.Error()
			return
		}
		j, _ := proto.DecodeJob(m.Data())
		_ = m.Ack(ctx)
		got <- j.ID
	}()
	require.NoError(t, publishJob(ctx, q, job("late", proto.LaneBatch)))
	require.Equal(t, "late", <-got)
}

func TestDepth(t *testing.T) {
	t.Parallel()
	q, _ := setup(t)
	ctx := testenv.Context(t, 30*time.Second)
	lanes, err := q.OpenLanes(ctx, "p", queue.LanesConfig{})
	require.NoError(t, err)
	_, err = q.Submit(ctx, proto.SourceBatch, job("s", ""))
	require.NoError(t, err)
	require.NoError(t, publishJob(ctx, q, job("a", proto.LaneBatch)))
	require.NoError(t, publishJob(ctx, q, job("b", proto.LaneInteractive)))
	queued, running, err := q.Depth(ctx)
	require.NoError(t, err)
	require.Equal(t, [2]uint64{3, 0}, [2]uint64{queued, running})

	m, err := lanes.Next(ctx, time.Second)
	require.NoError(t, err)
	queued, running, err = q.Depth(ctx)
	require.NoError(t, err)
	require.Equal(t, [2]uint64{2, 1}, [2]uint64{queued, running}, "a delivered job is running")
	require.NoError(t, m.Ack(ctx))
}

func TestEventsAndCancels(t *testing.T) {
	t.Parallel()
	q, _ := setup(t)
	ctx := testenv.Context(t, 10*time.Second)
	events := make(chan *proto.Event, 1)
	stop, err := q.SubscribeEvents("j", func(e *proto.Event) { events <- e })
	require.NoError(t, err)
	defer stop()
	cancels := make(chan string, 1)
	stopC, err := q.SubscribeCancels(func(id string) { cancels <- id })
	require.NoError(t, err)
	defer stopC()
	require.NoError(t, q.Flush(ctx))

	require.NoError(t, q.PublishEvent(ctx, &proto.Event{JobID: "j", Type: proto.EventStatus, Status: proto.StatusCompleted}))
	ev := <-events
	require.Equal(t, proto.StatusCompleted, ev.Status)
	require.Equal(t, proto.Version, ev.V)
	require.False(t, ev.Time.IsZero())

	require.NoError(t, q.PublishCancel("j"))
	require.Equal(t, "j", <-cancels)
}

func TestReject(t *testing.T) {
	t.Parallel()
	q, n := setup(t)
	ch := make(chan *nats.Msg, 1)
	sub, err := n.Conn.ChanSubscribe(proto.RejectSubject(proto.DefaultTenant), ch)
	require.NoError(t, err)
	defer sub.Unsubscribe()
	require.NoError(t, n.Conn.Flush())
	require.NoError(t, q.Reject(proto.DefaultTenant, []byte("junk"), "no id"))
	m := <-ch
	require.Equal(t, "junk", string(m.Data))
	require.Equal(t, "no id", m.Header.Get(proto.RejectReasonHeader))
}

func TestLanesServeSeveralPools(t *testing.T) {
	t.Parallel()
	q, _ := setup(t)
	ctx := testenv.Context(t, 30*time.Second)
	lanes, err := q.OpenLanes(ctx, "p", queue.LanesConfig{BatchEvery: -1, MorePools: []string{"gpu-xl"}})
	require.NoError(t, err)
	xl := func(id string, lane proto.Lane) *proto.Job { j := job(id, lane); j.Pool = "gpu-xl"; return j }
	require.NoError(t, publishJob(ctx, q, job("p-batch", proto.LaneBatch)))
	require.NoError(t, publishJob(ctx, q, xl("xl-inter", proto.LaneInteractive)))
	require.NoError(t, publishJob(ctx, q, job("p-inter", proto.LaneInteractive)))
	var got []string
	for deadline := time.Now().Add(10 * time.Second); len(got) < 3; {
		require.True(t, time.Now().Before(deadline), "only %v were served", got)
		m, err := lanes.Next(ctx, 50*time.Millisecond)
		if errors.Is(err, queue.ErrNoMessage) {
			continue
		}
		require.NoError(t, err)
		j, err := proto.DecodeJob(m.Data())
		require.NoError(t, err)
		got = append(got, j.ID)
		require.NoError(t, m.Ack(ctx))
	}
	require.ElementsMatch(t, []string{"p-batch", "xl-inter", "p-inter"}, got, "jobs of both pools are served")
}

// A pull whose time is up (wait 0 or less, as a loop's deadline leaves
// it) looks once and says there is nothing, or hands what waits: never
// nats.go's "invalid jetstream option", which its caller would log as a
// failure in normal operation.
func TestPullWithNoTimeLeftIsNoError(t *testing.T) {
	t.Parallel()
	q, _ := setup(t)
	ctx := testenv.Context(t, 30*time.Second)
	c, err := q.LaneConsumer(ctx, "p", proto.LaneBatch, queue.ConsumerConfig{})
	require.NoError(t, err)
	for _, wait := range []time.Duration{0, -time.Second} {
		_, err = c.Next(ctx, wait)
		require.ErrorIs(t, err, queue.ErrNoMessage, "wait %v", wait)
		n, err := c.Fetch(ctx, 4, wait, func(*queue.Message) {})
		require.NoError(t, err, "wait %v", wait)
		require.Zero(t, n)
	}
	require.NoError(t, publishJob(ctx, q, job("a", proto.LaneBatch)))
	require.NoError(t, publishJob(ctx, q, job("b", proto.LaneBatch)))
	m, err := c.Next(ctx, 0)
	require.NoError(t, err, "a job that waits is taken without waiting")
	require.NoError(t, m.Ack(ctx))
	var got []*queue.Message
	n, err := c.Fetch(ctx, 4, 0, func(m *queue.Message) { got = append(got, m) })
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.NoError(t, got[0].Ack(ctx))
}

// TestLanesSkipPausedLanes: a skipped lane is not pulled, its jobs stay
// queued, and once it is no longer skipped they are taken; with every
// lane skipped (a draining worker) nothing is taken.
func TestLanesSkipPausedLanes(t *testing.T) {
	t.Parallel()
	q, n := setup(t)
	ctx := testenv.Context(t, 30*time.Second)
	var paused atomic.Value
	paused.Store(map[string]bool{"p/interactive": true})
	lanes, err := q.OpenLanes(ctx, "p", queue.LanesConfig{BatchEvery: -1, Skip: func(pool string, lane proto.Lane) bool {
		return paused.Load().(map[string]bool)[proto.PausedLane(pool, lane)]
	}})
	require.NoError(t, err)
	require.NoError(t, publishJob(ctx, q, job("i0", proto.LaneInteractive)))
	require.NoError(t, publishJob(ctx, q, job("b0", proto.LaneBatch)))
	waitPending(t, n, map[proto.Lane]uint64{proto.LaneInteractive: 1, proto.LaneBatch: 1})

	m, err := lanes.Next(ctx, time.Second)
	require.NoError(t, err)
	j, _ := proto.DecodeJob(m.Data())
	require.Equal(t, "b0", j.ID, "the paused interactive lane is passed over")
	require.NoError(t, m.Ack(ctx))
	_, err = lanes.Next(ctx, 300*time.Millisecond)
	require.ErrorIs(t, err, queue.ErrNoMessage, "the paused lane's job is not taken")
	_, err = lanes.NextInteractive(ctx, 200*time.Millisecond)
	require.ErrorIs(t, err, queue.ErrNoMessage)
	waitPending(t, n, map[proto.Lane]uint64{proto.LaneInteractive: 1})

	paused.Store(map[string]bool{"p/interactive": true, "p/batch": true})
	require.NoError(t, publishJob(ctx, q, job("b1", proto.LaneBatch)))
	waitPending(t, n, map[proto.Lane]uint64{proto.LaneBatch: 1})
	_, err = lanes.Next(ctx, 300*time.Millisecond)
	require.ErrorIs(t, err, queue.ErrNoMessage, "every lane skipped: nothing is taken")

	// Resumed while a take waits: the waiting take gets the job.
	got := make(chan string, 1)
	go func() {
		m, err := lanes.Next(ctx, 10*time.Second)
		if err != nil {
			got <- err.Error()
			return
		}
		j, _ := proto.DecodeJob(m.Data())
		_ = m.Ack(ctx)
		got <- j.ID
	}()
	paused.Store(map[string]bool{"p/batch": true})
	require.Equal(t, "i0", <-got)
}

// TestSettleEndsPullsOpenBeforeAPause: a pull open on the server when a
// lane becomes skipped would get the next job of that lane and give it
// back, and JetStream then counts it as delivered until someone pulls
// again. Once Settle returns no such pull is open: a job published
// after it is delivered first to the take that follows the resume.
func TestSettleEndsPullsOpenBeforeAPause(t *testing.T) {
	t.Parallel()
	q, n := setup(t)
	ctx := testenv.Context(t, 30*time.Second)
	var paused atomic.Bool
	skip := func(pool string, lane proto.Lane) bool { return lane == proto.LaneInteractive && paused.Load() }
	// Two workers wait on the interactive lane, as idle ones do.
	var all []*queue.Lanes
	var loops sync.WaitGroup
	stop, stopLoops := context.WithCancel(ctx)
	t.Cleanup(func() {
		stopLoops()
		loops.Wait()
	})
	for range 2 {
		lanes, err := q.OpenLanes(ctx, "p", queue.LanesConfig{BatchEvery: -1, Skip: skip})
		require.NoError(t, err)
		all = append(all, lanes)
		loops.Go(func() {
			for stop.Err() == nil {
				if m, err := lanes.Next(stop, time.Hour); err == nil {
					_ = m.Nak(0)
				}
			}
		})
	}
	inter, err := n.JS.Consumer(ctx, proto.JobsStream, proto.LaneConsumer("p", proto.LaneInteractive))
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, err := inter.Info(ctx)
		return err == nil && info.NumWaiting > 0
	}, 10*time.Second, time.Millisecond, "a pull is open on the server")

	paused.Store(true)
	for _, l := range all {
		l.Settle()
	}
	require.NoError(t, publishJob(ctx, q, job("after-the-pause", proto.LaneInteractive)))
	info, err := inter.Info(ctx)
	require.NoError(t, err)
	require.Zero(t, info.NumWaiting, "no pull is open on the paused lane")

	// The paused workers stop; a take after the resume gets the job, and
	// its delivery is the first.
	stopLoops()
	loops.Wait()
	paused.Store(false)
	m, err := all[0].Next(ctx, 5*time.Second)
	require.NoError(t, err)
	require.EqualValues(t, 1, m.Delivered(), "no pull got the job while the lane was paused")
	require.NoError(t, m.Ack(ctx))
}

// TestSubscribeAllAndControl: the console's subscription gets every
// class of event and the previews; a control change reaches its
// subscribers.
func TestSubscribeAllAndControl(t *testing.T) {
	t.Parallel()
	q, _ := setup(t)
	ctx := testenv.Context(t, 30*time.Second)
	got := make(chan proto.EventType, 8)
	stop, err := q.SubscribeAll(func(ev *proto.Event) { got <- ev.Type })
	require.NoError(t, err)
	defer stop()
	changed := make(chan struct{}, 1)
	stopc, err := q.SubscribeControl(func() { changed <- struct{}{} })
	require.NoError(t, err)
	defer stopc()
	require.NoError(t, q.Flush(ctx))
	require.NoError(t, q.PublishEvent(ctx, &proto.Event{JobID: "j", Type: proto.EventStatus, Status: proto.StatusInProgress}))
	require.NoError(t, q.PublishEventNoWait(&proto.Event{JobID: "j", Type: proto.EventProgress, Progress: &proto.Progress{Value: 1, Max: 2}}))
	require.NoError(t, q.PublishEventNoWait(&proto.Event{JobID: "j", Type: proto.EventPreview, Preview: &proto.Preview{Mime: "image/png", Data: "AA=="}}))
	require.NoError(t, q.PublishEvent(ctx, &proto.Event{JobID: "j", Type: proto.EventStatus, Status: proto.StatusCompleted}))
	seen := map[proto.EventType]int{}
	for range 4 {
		select {
		case typ := <-got:
			seen[typ]++
		case <-ctx.Done():
			t.Fatal("events missing", seen)
		}
	}
	require.Equal(t, map[proto.EventType]int{proto.EventStatus: 2, proto.EventProgress: 1, proto.EventPreview: 1}, seen)
	require.NoError(t, q.PublishControl())
	select {
	case <-changed:
	case <-ctx.Done():
		t.Fatal("no control change")
	}
}

// TestLanesGiveBackWhatAWaitingPullGetsAfterAPause: a take that waits
// while its lane is paused does not return the job a pull already waiting
// on the server brings; the job stays queued.
func TestLanesGiveBackWhatAWaitingPullGetsAfterAPause(t *testing.T) {
	t.Parallel()
	q, n := setup(t)
	ctx := testenv.Context(t, 30*time.Second)
	var paused atomic.Bool
	lanes, err := q.OpenLanes(ctx, "p", queue.LanesConfig{BatchEvery: -1, Skip: func(string, proto.Lane) bool { return paused.Load() }})
	require.NoError(t, err)
	got := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		close(started)
		_, err := lanes.Next(ctx, 2*time.Second)
		got <- err
	}()
	<-started
	paused.Store(true)
	require.NoError(t, publishJob(ctx, q, job("late", proto.LaneInteractive)))
	require.ErrorIs(t, <-got, queue.ErrNoMessage, "a paused take returns nothing")
	// The job stays on the lane: waiting, or handed back and waiting for
	// its redelivery (a pull request still open on the server may take the
	// handed-back message again, to be redelivered after its ack wait);
	// never acknowledged, so never lost.
	require.Eventually(t, func() bool {
		c, err := n.JS.Consumer(context.Background(), proto.JobsStream, "pool-p-"+string(proto.LaneInteractive))
		if err != nil {
			return false
		}
		info, err := c.Info(context.Background())
		return err == nil && info.NumPending+uint64(info.NumAckPending) == 1 && info.AckFloor.Stream == 0
	}, 10*time.Second, 5*time.Millisecond)
}

// TestEnsureLaneConsumersBeforeAnyWorker: a pool with no worker yet gets
// both lane consumers, so an autoscaler reading a consumer's backlog sees
// the jobs queued for it; a consumer a worker opened keeps its settings.
func TestEnsureLaneConsumersBeforeAnyWorker(t *testing.T) {
	q, n := setup(t)
	ctx := testenv.Context(t, 30*time.Second)
	// The batch lane's consumer exists already, as a worker set it.
	_, err := q.LaneConsumer(ctx, "sdxl", proto.LaneBatch, queue.ConsumerConfig{AckWait: 2 * time.Minute})
	require.NoError(t, err)

	j := job("waits-for-a-worker", proto.LaneInteractive)
	j.Pool = "sdxl"
	require.NoError(t, publishJob(ctx, q, j))
	require.NoError(t, q.EnsureLaneConsumers(ctx, "sdxl"))
	require.NoError(t, q.EnsureLaneConsumers(ctx, "sdxl"), "a second call changes nothing")

	inter, err := n.JS.Consumer(ctx, proto.JobsStream, proto.LaneConsumer("sdxl", proto.LaneInteractive))
	require.NoError(t, err)
	info, err := inter.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, proto.JobSubject("sdxl", proto.LaneInteractive), info.Config.FilterSubject)
	require.EqualValues(t, 1, info.NumPending, "the queued job counts in the new consumer's backlog")

	batch, err := n.JS.Consumer(ctx, proto.JobsStream, proto.LaneConsumer("sdxl", proto.LaneBatch))
	require.NoError(t, err)
	info, err = batch.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, 2*time.Minute, info.Config.AckWait, "the worker's consumer is left as it was")

	// The worker that comes later takes the job from the same consumer.
	lanes, err := q.OpenLanes(ctx, "sdxl", queue.LanesConfig{})
	require.NoError(t, err)
	msg, err := lanes.Next(ctx, 5*time.Second)
	require.NoError(t, err)
	require.NoError(t, msg.Ack(ctx))
}
