package dispatch_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/dispatch"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// TestConcurrentAdmissionKeepsTheGuarantees admits hundreds of
// submissions at once, with many in flight: distinct jobs; for many of
// them a second submission of the same id with another input, sent right
// after the first; and submissions a dispatcher took and died with, some
// after recording the job, which come back after AckWait. Every job
// reaches its lane exactly once with its first submission's input, and
// only after its IN_QUEUE event is stored; every later submission of an
// id is dropped as a duplicate (the submissions of one id are admitted in
// intake order); the redelivered ones are admitted, none lost; and every
// intake message is acked.
func TestConcurrentAdmissionKeepsTheGuarantees(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	ctx := testenv.Context(t, 2*time.Minute)
	const (
		crashed = 40  // taken by a dispatcher that died, half of them after recording the job
		jobs    = 400 // in all, the crashed ones first
		dups    = 150 // second submissions of the ids after the crashed ones
	)
	input := func(id, whose string) string {
		return fmt.Sprintf(`{"workflow":{"1":{"class_type":"PreviewAny","inputs":{"source":"%s of %s"}}}}`, whose, id)
	}
	publish := func(id, whose, msgID string) uint64 {
		t.Helper()
		msg := &nats.Msg{Subject: proto.SubmitSubject(proto.SourceBatch, ""),
			Data: fmt.Appendf(nil, `{"v":1,"id":%q,"input":%s}`, id, input(id, whose)), Header: nats.Header{}}
		msg.Header.Set(proto.MsgIDHeader, msgID)
		ack, err := b.nats.JS.PublishMsg(ctx, msg)
		require.NoError(t, err)
		return ack.Sequence
	}
	id := func(i int) string { return "job-" + strconv.Itoa(i) }

	// A dispatcher takes the first submissions and dies with them, having
	// recorded every other one.
	for i := range crashed {
		publish(id(i), "the first", id(i))
	}
	dead, err := b.q.IntakeConsumer(ctx, queue.ConsumerConfig{AckWait: time.Second})
	require.NoError(t, err)
	taken := 0
	for taken < crashed {
		n, err := dead.Fetch(ctx, crashed-taken, time.Second, func(msg *queue.Message) {
			job, err := proto.DecodeJob(msg.Data())
			require.NoError(t, err)
			if n, _ := strconv.Atoi(job.ID[len("job-"):]); n%2 == 0 {
				job.Source, job.Lane, job.Pool = proto.SourceBatch, proto.LaneBatch, proto.DefaultPool
				_, _, err := b.db.Admit(ctx, strconv.FormatUint(msg.Seq(), 10), rdb.ParamsFor(job), "")
				require.NoError(t, err)
			}
		})
		require.NoError(t, err)
		taken += n
	}

	// A worker on the lane: each job must have its IN_QUEUE event stored
	// before it can be taken.
	var (
		mu     sync.Mutex
		onLane = map[string][]string{} // id → the inputs taken off the lane
	)
	lane, err := b.q.LaneConsumer(ctx, proto.DefaultPool, proto.LaneBatch, queue.ConsumerConfig{})
	require.NoError(t, err)
	wctx, stopWorker := context.WithCancel(ctx)
	var worker sync.WaitGroup
	worker.Add(1)
	go func() {
		defer worker.Done()
		for wctx.Err() == nil {
			_, err := lane.Fetch(wctx, 64, 100*time.Millisecond, func(msg *queue.Message) {
				job, err := proto.DecodeJob(msg.Data())
				if err != nil {
					t.Errorf("job on the lane: %v", err)
					return
				}
				evs, _, err := b.q.ReadEvents(ctx, job.ID, 0, 10)
				if err != nil || len(evs) == 0 || evs[0].Status != proto.StatusInQueue {
					t.Errorf("%s reached its lane before its IN_QUEUE event was stored (events %v, %v)", job.ID, evs, err)
				}
				mu.Lock()
				onLane[job.ID] = append(onLane[job.ID], string(job.Input))
				mu.Unlock()
				if err := msg.Ack(ctx); err != nil {
					t.Errorf("ack %s: %v", job.ID, err)
				}
			})
			if err != nil && wctx.Err() == nil {
				t.Errorf("fetch the lane: %v", err)
				return
			}
		}
	}()
	defer func() { stopWorker(); worker.Wait() }()

	// One replica with many admissions in flight. (Two replicas may
	// admit the two submissions of an id at the same time, one each; then
	// either may make the record, as before, when each admitted one at a
	// time.)
	b.startWith(t, dispatch.Config{FetchWait: 200 * time.Millisecond, AckWait: time.Second, Concurrency: 32}, dispatch.Admission{})

	// The rest, each second submission right after its first.
	first := map[string]uint64{}
	for i := crashed; i < jobs; i++ {
		first[id(i)] = publish(id(i), "the first", id(i))
		if i < crashed+dups {
			publish(id(i), "the second", id(i)+"-again")
		}
	}

	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(onLane) == jobs && b.streamMsgs(t, proto.SubmitStream) == 0
	}, time.Minute, 20*time.Millisecond, "every job on its lane and every submission acked")
	counts, err := b.db.Counts(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(dups), counts[rdb.CountDuplicate], "every second submission dropped as a duplicate")

	mu.Lock()
	defer mu.Unlock()
	for i := range jobs {
		rec, err := b.db.Get(ctx, id(i))
		require.NoError(t, err)
		require.Equal(t, proto.StatusInQueue, rec.Status, id(i))
		require.Len(t, onLane[id(i)], 1, "%s reached its lane once", id(i))
		require.JSONEq(t, input(id(i), "the first"), onLane[id(i)][0], "%s: the first submission's job", id(i))
		if seq, ok := first[id(i)]; ok {
			intake, err := b.db.Client().HGet(ctx, b.db.Prefix()+proto.JobKey(id(i)), "intake").Result()
			require.NoError(t, err)
			require.Equal(t, strconv.FormatUint(seq, 10), intake, "%s: the record is the first submission's", id(i))
		}
	}
}
