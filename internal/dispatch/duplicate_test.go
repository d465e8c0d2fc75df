package dispatch_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/dispatch"
	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/metrics"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// TestHostileResubmissionChangesNothing submits, on cf.submit.*, other
// jobs under the id of an existing one while it is queued, while it runs
// and after it finished: another workflow, another webhook, an invalid
// lane, an invalid input, another pool and TTL, from every source, with
// and without a message id of their own (so JetStream's dedupe window
// does not drop them first). None changes the job: its record, its
// webhook target, the one message on its lane and its events stay its
// own, it finishes with its own result, and each submission is counted
// as a duplicate.
func TestHostileResubmissionChangesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	ctx := testenv.Context(t, time.Minute)
	reg := metrics.NewRegistry()
	b.start(t, dispatch.Admission{Metrics: dispatch.NewMetrics(reg, nil)})

	const (
		id      = "victim"
		webhook = "https://hooks.example.com/victim?token=mine"
	)
	var (
		mu     sync.Mutex
		events []string
	)
	stop, err := b.q.SubscribeEvents(id, func(ev *proto.Event) {
		mu.Lock()
		events = append(events, fmt.Sprintf("%s %d %s", ev.Status, ev.Attempt, ev.WorkerID))
		mu.Unlock()
	})
	require.NoError(t, err)
	defer stop()

	own := `{"workflow":{"1":{"class_type":"PreviewAny","inputs":{"source":"the victim's own"}}}}`
	b.submit(t, proto.SourceAPI, fmt.Sprintf(`{"v":1,"id":%q,"input":%s,"webhook":%q}`, id, own, webhook), id)
	b.waitRecord(t, id, func(r *proto.Record) bool { return r.Status == proto.StatusInQueue })

	other := `{"workflow":{"1":{"class_type":"PreviewAny","inputs":{"source":"someone else's"}}}}`
	hostile := []struct {
		name, source, body, msgID string
	}{
		{name: "other workflow and webhook", source: proto.SourceAPI,
			body: fmt.Sprintf(`{"v":1,"id":%q,"input":%s,"webhook":"https://evil.example.com/steal"}`, id, other)},
		{name: "a message id of its own, as after the dedupe window", source: proto.SourceRunPod, msgID: id + "-later",
			body: fmt.Sprintf(`{"v":1,"id":%q,"input":%s,"webhook":"https://evil.example.com/again"}`, id, other)},
		{name: "invalid lane", source: proto.SourceBatch, msgID: "hostile-lane",
			body: fmt.Sprintf(`{"v":1,"id":%q,"lane":"fast","input":%s}`, id, other)},
		{name: "invalid input", source: proto.SourceAPI, body: fmt.Sprintf(`{"v":1,"id":%q,"input":{"images":[]}}`, id)},
		{name: "other pool, lane and TTL", source: "cli",
			body: fmt.Sprintf(`{"v":1,"id":%q,"pool":"other","lane":"batch","policy":{"ttl":1},"input":%s}`, id, other)},
	}
	submitted := 0
	// resubmit sends every hostile submission and waits until the
	// dispatcher has dropped them all.
	resubmit := func(phase string) {
		t.Helper()
		for _, h := range hostile {
			msgID := h.msgID
			if msgID != "" {
				msgID += "-" + phase // or JetStream drops it as a repeat
			}
			b.submit(t, h.source, h.body, msgID)
		}
		submitted += len(hostile)
		require.Eventually(t, func() bool {
			counts, err := b.db.Counts(ctx)
			return err == nil && counts[rdb.CountDuplicate] == int64(submitted) && b.streamMsgs(t, proto.SubmitStream) == 0
		}, 10*time.Second, 10*time.Millisecond, "%s: the resubmissions were not all dropped as duplicates", phase)
	}
	// unchanged checks that the job is still as before.
	unchanged := func(phase string, before *proto.Record, lane uint64) {
		t.Helper()
		rec, err := b.db.Get(ctx, id)
		require.NoError(t, err)
		require.Equal(t, before, rec, "%s: the record changed", phase)
		url, _, err := b.db.Webhook(ctx, id)
		require.NoError(t, err)
		require.Equal(t, webhook, url, "%s: the webhook target changed", phase)
		require.Equal(t, lane, b.streamMsgs(t, proto.JobsStream), "%s: a resubmission reached a lane", phase)
	}

	// While it is queued.
	queued, err := b.db.Get(ctx, id)
	require.NoError(t, err)
	resubmit("queued")
	unchanged("queued", queued, 1)

	// While it runs: a worker took its one message off its lane.
	cons, err := b.q.LaneConsumer(ctx, queued.Pool, queued.Lane, queue.ConsumerConfig{})
	require.NoError(t, err)
	msg, err := cons.Next(ctx, 5*time.Second)
	require.NoError(t, err)
	job, err := proto.DecodeJob(msg.Data())
	require.NoError(t, err)
	require.JSONEq(t, own, string(job.Input), "the lane holds the victim's own job")
	cl, err := b.core.Claim(ctx, msg, job, lifecycle.Holder{WorkerID: "w1", LeaseTTL: time.Minute})
	require.NoError(t, err)
	running, err := b.db.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, proto.StatusInProgress, running.Status)
	resubmit("running")
	unchanged("running", running, 1)

	// It finishes with its own result: the worker runs what it took.
	out, err := json.Marshal(proto.Output{Images: []proto.OutputItem{}, Text: []proto.OutputItem{{Type: proto.ItemText, Data: "ran " + string(job.Input)}}})
	require.NoError(t, err)
	require.NoError(t, b.core.Finish(ctx, cl, lifecycle.Result{Status: proto.StatusCompleted, Output: out}))
	require.Eventually(t, func() bool { return b.streamMsgs(t, proto.JobsStream) == 0 }, 5*time.Second, 10*time.Millisecond, "the job message was not acked")
	finished, err := b.db.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, proto.StatusCompleted, finished.Status)
	require.JSONEq(t, string(out), string(finished.Output))

	// After it finished.
	resubmit("finished")
	unchanged("finished", finished, 0)

	seen := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), events...)
	}
	require.Eventually(t, func() bool { return len(seen()) >= 3 }, 5*time.Second, 10*time.Millisecond, "events: %v", seen())
	require.Equal(t, []string{"IN_QUEUE 0 ", "IN_PROGRESS 1 w1", "COMPLETED 1 w1"}, seen(), "the job's events are its own")
	counts, err := b.db.Counts(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 3*len(hostile), counts[rdb.CountDuplicate])
	require.EqualValues(t, 1, counts[proto.StatusCompleted])
	require.Zero(t, counts[proto.StatusFailed], "no resubmission failed the job")
	var buf bytes.Buffer
	require.NoError(t, reg.Write(context.Background(), &buf))
	require.Contains(t, buf.String(), fmt.Sprintf("comfyfleet_submissions_duplicate_total %d", 3*len(hostile)))
	require.Contains(t, buf.String(), `comfyfleet_jobs_admitted_total{lane="interactive",pool="default"} 1`)
}
