package lifecycle_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// TestJobLife: a job's whole life through the core, and its events in the
// order of its transitions.
func TestJobLife(t *testing.T) {
	t.Parallel()
	b := setup(t)
	require.Equal(t, lifecycle.Queued, b.submit(t, job("j1")))
	cl := b.claim(t, "w1", time.Minute)
	require.Equal(t, 1, cl.Attempt)
	require.Equal(t, proto.StatusInProgress, b.record(t, "j1").Status)
	b.core.Progress(cl, proto.Progress{Node: "3", Value: 1, Max: 2, Percent: 50})
	require.NoError(t, b.core.Renew(b.ctx, cl))
	require.NoError(t, b.core.Finish(b.ctx, cl, lifecycle.Result{Status: proto.StatusCompleted, Output: json.RawMessage(`{"images":[]}`)}))
	b.waitStatuses(t, "j1", proto.StatusInQueue, proto.StatusInProgress, proto.StatusCompleted)
	rec := b.record(t, "j1")
	require.Equal(t, proto.StatusCompleted, rec.Status)
	require.JSONEq(t, `{"images":[]}`, string(rec.Output))
	require.Zero(t, b.jobsWaiting(t), "the delivery was acked")
	_, err := b.db.Lease(b.ctx, "j1")
	require.ErrorIs(t, err, rdb.ErrLeaseLost, "the lease ended")
}

// TestHostileResubmission: a submission of an id that already has a
// record changes nothing, whether the job waits, runs or has finished —
// not its record, not its webhook, not its result — and is counted.
func TestHostileResubmission(t *testing.T) {
	t.Parallel()
	b := setup(t)
	orig := job("victim")
	orig.Webhook = "https://example.com/mine"
	b.submit(t, orig)
	hostile := func(t *testing.T) {
		t.Helper()
		h := &proto.Job{ID: "victim", Input: json.RawMessage(`{"workflow":{"1":{"class_type":"Other","inputs":{}}}}`),
			Webhook: "https://evil.example/steal", Lane: "fast", Pool: "other"}
		// Past the dedupe window it is a new message: publish it under
		// another message id, as a producer could.
		data, err := json.Marshal(h)
		require.NoError(t, err)
		_, err = b.nats.JS.Publish(b.ctx, proto.SubmitSubject(proto.SourceBatch, ""), data)
		require.NoError(t, err)
		before := b.record(t, "victim")
		require.Equal(t, lifecycle.Duplicate, b.admitNext(t))
		require.Equal(t, before, b.record(t, "victim"), "the record is unchanged")
		url, _, err := b.db.Webhook(b.ctx, "victim")
		require.NoError(t, err)
		require.Equal(t, "https://example.com/mine", url, "the webhook target is unchanged")
	}
	t.Run("queued", hostile)
	cl := b.claim(t, "w1", time.Minute)
	b.noDelivery(t)
	t.Run("running", hostile)
	b.noDelivery(t)
	require.NoError(t, b.core.Finish(b.ctx, cl, lifecycle.Result{Status: proto.StatusCompleted, Output: json.RawMessage(`{"images":["mine"]}`)}))
	t.Run("finished", hostile)
	b.noDelivery(t)
	rec := b.record(t, "victim")
	require.Equal(t, proto.StatusCompleted, rec.Status)
	require.JSONEq(t, `{"images":["mine"]}`, string(rec.Output))
	counts, err := b.core.Counts(b.ctx)
	require.NoError(t, err)
	require.Equal(t, int64(3), counts[rdb.CountDuplicate])
}

// TestRedeliveredSubmission: the submission that made the record, when
// redelivered (a dispatcher died before its ack), is admitted once; the
// adapter's early record is the same submission's.
func TestRedeliveredSubmission(t *testing.T) {
	t.Parallel()
	b := setup(t)
	require.NoError(t, b.core.Submit(b.ctx, proto.SourceAPI, job("api-1"), true))
	require.Equal(t, proto.StatusInQueue, b.record(t, "api-1").Status, "recorded before any dispatcher read it")
	msg, err := b.intake.Next(b.ctx, 5*time.Second)
	require.NoError(t, err)
	// The first dispatcher dies before its ack: the message comes back.
	require.NoError(t, msg.Nak(0))
	msg, err = b.intake.Next(b.ctx, 5*time.Second)
	require.NoError(t, err)
	out, _, err := b.core.Admit(b.ctx, msg, lifecycle.AdmitOptions{DefaultPool: proto.DefaultPool})
	require.NoError(t, err)
	require.Equal(t, lifecycle.Queued, out, "the adapter's record is this submission's")
	_, j := b.next(t)
	require.Equal(t, "api-1", j.ID)
	require.Equal(t, proto.LaneInteractive, j.Lane)
}

// TestAdmissionFailures: a message that does not decode fails its job
// with the reason; one without an id goes to cf.rejects.
func TestAdmissionFailures(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rejects := make(chan string, 1)
	stop, err := b.q.SubscribeRejects(proto.DefaultTenant, func(_ []byte, reason string) { rejects <- reason })
	require.NoError(t, err)
	defer stop()
	publish := func(body string) {
		_, err := b.nats.JS.Publish(b.ctx, proto.SubmitSubject(proto.SourceBatch, ""), []byte(body))
		require.NoError(t, err)
	}
	publish(`{"id":"bad-lane","lane":"fast","input":{"workflow":{}}}`)
	require.Equal(t, lifecycle.Failed, b.admitNext(t))
	rec := b.record(t, "bad-lane")
	require.Equal(t, proto.StatusFailed, rec.Status)
	require.Contains(t, rec.Error, "field lane")
	b.waitStatuses(t, "bad-lane", proto.StatusFailed)

	publish(`{"id":"no-workflow","input":{}}`)
	require.Equal(t, lifecycle.Failed, b.admitNext(t))
	require.Equal(t, "Missing 'workflow' parameter", b.record(t, "no-workflow").Error)

	publish(`not json`)
	require.Equal(t, lifecycle.Unidentified, b.admitNext(t))
	select {
	case reason := <-rejects:
		require.Contains(t, reason, "decode job message")
	case <-time.After(5 * time.Second):
		t.Fatal("no reject")
	}
	b.noDelivery(t)
}

// TestEveryMalformedFieldFailsTheJob replays what went to cf.rejects
// before (the whole decode failed before the id was known) and the values
// that overflowed later: each message with a usable id ends as a FAILED
// record whose error names the field, with its batch, and a FAILED event;
// nothing is delivered to a worker and nothing is rejected.
func TestEveryMalformedFieldFailsTheJob(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rejects := make(chan string, 16)
	stop, err := b.q.SubscribeRejects(proto.DefaultTenant, func(_ []byte, reason string) { rejects <- reason })
	require.NoError(t, err)
	defer stop()
	const wf = `"input":{"workflow":{"9":{"class_type":"SaveImage","inputs":{}}}}`
	tests := []struct {
		id, fields, wantErr string
	}{
		{"index-type", `"index":"x"`, "field index: got a string, want a whole number"},
		{"policy-type", `"policy":"fast"`, "field policy: got a string, want an object"},
		{"exec-max", `"policy":{"executionTimeout":9223372036854775807}`, "field policy.executionTimeout: 9223372036854775807 ms is more than the limit of 604800000 ms (7 days)"},
		{"ttl-far", `"policy":{"ttl":9000000000000000}`, "field policy.ttl: 9000000000000000 ms is more than the limit"},
		{"retention-far", `"retention_ms":9223372036854775807`, "field retention_ms: 9223372036854775807 ms is more than the limit"},
		{"webhook-file", `"webhook":"file:///etc/passwd"`, `field webhook: has the scheme "file"`},
		{"future", `"submitted_at":"2999-01-01T00:00:00Z"`, "field submitted_at: 2999-01-01T00:00:00Z is"},
		{"lane-type", `"lane":7`, "field lane: got a number, want a string"},
		{"s3-type", `"s3Config":{"accessSecret":{"x":1}}`, "field s3Config.accessSecret: got an object, want a string"},
		{"v-type", `"v":"one"`, "field v: got a string, want a whole number"},
	}
	for _, tt := range tests {
		body := `{"id":"` + tt.id + `","batch_id":"bad-batch",` + tt.fields + `,` + wf + `}`
		_, err := b.nats.JS.Publish(b.ctx, proto.SubmitSubject(proto.SourceBatch, ""), []byte(body))
		require.NoError(t, err)
		require.Equal(t, lifecycle.Failed, b.admitNext(t), tt.id)
		rec := b.record(t, tt.id)
		require.Equal(t, proto.StatusFailed, rec.Status, tt.id)
		require.Contains(t, rec.Error, tt.wantErr, tt.id)
		require.Equal(t, "bad-batch", rec.BatchID, "%s is found with its batch", tt.id)
		b.waitStatuses(t, tt.id, proto.StatusFailed)
	}
	// An image name that reorders its text is the input's: FAILED too.
	_, err = b.nats.JS.Publish(b.ctx, proto.SubmitSubject(proto.SourceBatch, ""),
		[]byte(`{"id":"rlo","input":{"workflow":{},"images":[{"name":"a.png","image":"AA=="},{"name":"x\u202egnp.exe","image":"AA=="}]}}`))
	require.NoError(t, err)
	require.Equal(t, lifecycle.Failed, b.admitNext(t))
	require.Contains(t, b.record(t, "rlo").Error, `images[1].name: "x\u202egnp.exe" has the control or format character U+202E`)

	// Within the clock skew a submission time ahead is taken, and the
	// record's delayTime cannot go negative: its submitted_at is Redis's.
	ahead := time.Now().Add(proto.MaxClockSkew / 2).UTC().Format(time.RFC3339)
	_, err = b.nats.JS.Publish(b.ctx, proto.SubmitSubject(proto.SourceBatch, ""), []byte(`{"id":"skewed","submitted_at":"`+ahead+`",`+wf+`}`))
	require.NoError(t, err)
	require.Equal(t, lifecycle.Queued, b.admitNext(t))
	cl := b.claim(t, "w1", time.Minute)
	require.GreaterOrEqual(t, cl.Record.DelayTime(), time.Duration(0))
	require.False(t, cl.Record.SubmittedAt.After(time.Now().Add(time.Second)), "the record's submitted_at is the fleet's")

	select {
	case reason := <-rejects:
		t.Fatalf("a message with a usable id was rejected: %s", reason)
	default:
	}
}

// TestAdmittedMessageTooLargeFailsTheJob: a submission that fits NATS's
// max payload but no longer does once admission adds pool, lane, source
// and submitted_at is failed with the sizes and what to do, instead of
// being NAKed for ever.
func TestAdmittedMessageTooLargeFailsTheJob(t *testing.T) {
	t.Parallel()
	b := setup(t)
	limit := b.q.MaxJobMessage()
	require.Positive(t, limit)
	head := `{"id":"big","input":{"workflow":{"9":{"class_type":"SaveImage","inputs":{"pad":"`
	tail := `"}}}}}`
	body := head + strings.Repeat("x", limit-len(head)-len(tail)) + tail
	require.Len(t, body, limit)
	_, err := b.nats.JS.Publish(b.ctx, proto.SubmitSubject(proto.SourceBatch, ""), []byte(body))
	require.NoError(t, err)
	require.Equal(t, lifecycle.Failed, b.admitNext(t))
	rec := b.record(t, "big")
	require.Equal(t, proto.StatusFailed, rec.Status)
	require.Contains(t, rec.Error, "the job message of big is ")
	require.Contains(t, rec.Error, fmt.Sprintf("more than the %d bytes a NATS message may carry here", limit))
	require.Contains(t, rec.Error, "send large inputs as images or by URL")
	b.waitStatuses(t, "big", proto.StatusInQueue, proto.StatusFailed)
	b.noDelivery(t)

	// Submitting a message over the limit says so, with no try that
	// could ever fit.
	over := &proto.Job{ID: "bigger", Input: json.RawMessage(`{"workflow":{"pad":"` + strings.Repeat("x", limit) + `"}}`)}
	err = b.core.Submit(b.ctx, proto.SourceBatch, over, false)
	var tl *queue.TooLargeError
	require.ErrorAs(t, err, &tl)
	require.ErrorIs(t, err, queue.ErrTooLarge)
	require.Equal(t, limit, tl.Limit)
	require.Greater(t, tl.Size, limit)
}

// TestRetryTooLargeFailsAtOnce: a retried job whose message no longer
// fits (the server's max_payload was lowered) fails again with the reason
// at once, without the retries that a passing fault gets.
func TestRetryTooLargeFailsAtOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.submit(t, job("r"))
	cl := b.claim(t, "w1", time.Minute)
	require.NoError(t, b.core.Finish(b.ctx, cl, lifecycle.Result{Status: proto.StatusFailed, Error: "boom"}))
	j := *cl.Job
	j.Input = json.RawMessage(`{"workflow":{"pad":"` + strings.Repeat("x", b.q.MaxJobMessage()) + `"}}`)
	start := time.Now()
	_, err := b.core.Retry(b.ctx, &j)
	require.ErrorIs(t, err, queue.ErrTooLarge)
	require.Less(t, time.Since(start), 5*time.Second, "not retried as a passing fault")
	rec := b.record(t, "r")
	require.Equal(t, proto.StatusFailed, rec.Status)
	require.Contains(t, rec.Error, proto.MsgRetryNotQueued+"the job message of r is")
}

// TestClaimHeldGivesBack: a duplicate delivery of a job whose worker is
// alive is given back until that worker's lease would lapse; it never runs
// on a second GPU.
func TestClaimHeldGivesBack(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.submit(t, job("j"))
	cl := b.claim(t, "w1", time.Minute)
	// A second copy of the job's message (a replay published under another
	// id, a redelivery after AckWait).
	require.NoError(t, b.q.PublishJob(b.ctx, cl.Job, "j.copy"))
	msg, j := b.next(t)
	_, err := b.core.Claim(b.ctx, msg, j, lifecycle.Holder{WorkerID: "w2", LeaseTTL: time.Minute})
	require.ErrorIs(t, err, lifecycle.ErrHeld)
	require.Equal(t, "w1", b.record(t, "j").WorkerID)
	b.noDelivery(t) // given back for after the lease, not at once
}

// TestClaimRecreatesALostRecord: a job message whose record was lost (a
// Redis that kept nothing) is not dropped: its record is made again from
// the message, counted, and the job runs.
func TestClaimRecreatesALostRecord(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.submit(t, job("lost"))
	require.NoError(t, b.db.Client().Del(b.ctx, b.db.Prefix()+proto.JobKey("lost")).Err())
	cl := b.claim(t, "w1", time.Minute)
	require.Equal(t, 1, cl.Attempt)
	rec := b.record(t, "lost")
	require.Equal(t, proto.StatusInProgress, rec.Status)
	require.Equal(t, proto.SourceBatch, rec.Source)
	counts, err := b.core.Counts(b.ctx)
	require.NoError(t, err)
	require.Equal(t, int64(1), counts[rdb.CountRecreated])
}

// TestClaimOfExpiredJob: a job still queued past its TTL when a worker
// gets it ends TIMED_OUT, never reaching the GPU.
func TestClaimOfExpiredJob(t *testing.T) {
	t.Parallel()
	b := setup(t)
	j := job("old")
	j.Policy.TTL = 20
	b.submit(t, j)
	msg, got := b.next(t)
	require.Eventually(t, func() bool {
		ids, err := b.db.DueTTL(b.ctx, 10)
		return err == nil && len(ids) == 1
	}, 5*time.Second, 5*time.Millisecond)
	_, err := b.core.Claim(b.ctx, msg, got, lifecycle.Holder{WorkerID: "w1", LeaseTTL: time.Minute})
	require.ErrorIs(t, err, lifecycle.ErrEnded)
	rec := b.record(t, "old")
	require.Equal(t, proto.StatusTimedOut, rec.Status)
	require.Equal(t, proto.MsgTTLExpired, rec.Error)
	b.waitStatuses(t, "old", proto.StatusInQueue, proto.StatusTimedOut)
	require.Zero(t, b.jobsWaiting(t))
}

// TestAttemptsUsedUp: counted failures up to MaxAttempts, then the job
// fails with every attempt's error and a dead letter, durable before the
// delivery is acked.
func TestAttemptsUsedUp(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.submit(t, job("oom"))
	final := lifecycle.Result{Status: proto.StatusFailed, Error: "Job processing failed", Output: json.RawMessage(`{"error":"Job processing failed","details":["OOM\nTIPS: smaller"]}`)}
	for attempt := 1; attempt <= 3; attempt++ {
		cl := b.claim(t, "w1", time.Minute)
		require.Equal(t, attempt, cl.Attempt)
		require.NoError(t, b.core.Requeue(b.ctx, cl, lifecycle.Requeue{Reason: "ComfyUI ran out of memory", Counted: true, Final: final}))
	}
	rec := b.record(t, "oom")
	require.Equal(t, proto.StatusFailed, rec.Status)
	require.Equal(t, 3, rec.Attempt)
	dls, err := b.q.DeadLetters(b.ctx, "", 10)
	require.NoError(t, err)
	require.Len(t, dls, 1)
	require.Equal(t, "oom", dls[0].JobID)
	require.Equal(t, "Job processing failed: OOM TIPS: smaller", dls[0].Reason, "the cause, not worker-comfyui's words alone")
	require.Len(t, dls[0].Attempts, 3)
	require.Zero(t, b.jobsWaiting(t), "acked once the dead letter was durable")
	b.waitStatuses(t, "oom", proto.StatusInQueue, proto.StatusInProgress, proto.StatusInQueue,
		proto.StatusInProgress, proto.StatusInQueue, proto.StatusInProgress, proto.StatusFailed)
}

// TestDeadLetterPublishRetriedUntilDurable: while the dead-letter stream
// refuses the publish, the job's delivery is not acked; once it takes it,
// the dead letter is there once and the delivery is acked.
func TestDeadLetterPublishRetriedUntilDurable(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.submit(t, job("dl"))
	cl := b.claim(t, "w1", time.Minute)
	dlq, err := b.nats.JS.Stream(b.ctx, proto.DLQStream)
	require.NoError(t, err)
	info, err := dlq.Info(b.ctx)
	require.NoError(t, err)
	require.NoError(t, b.nats.JS.DeleteStream(b.ctx, proto.DLQStream))

	done := make(chan error, 1)
	go func() {
		done <- b.core.Finish(b.ctx, cl, lifecycle.Result{Status: proto.StatusFailed, Error: "boom", DeadLetter: true})
	}()
	// The terminal write landed, the dead letter is owed and the delivery
	// still held while the publish is refused.
	require.Eventually(t, func() bool {
		rec, err := b.db.Get(b.ctx, "dl")
		return err == nil && rec.Status == proto.StatusFailed
	}, 5*time.Second, 5*time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("Finish returned while the dead letter could not be published: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	require.Equal(t, uint64(1), b.jobsWaiting(t), "not acked yet")
	_, err = b.nats.JS.CreateStream(b.ctx, info.Config)
	require.NoError(t, err)
	require.NoError(t, <-done)
	dls, err := b.q.DeadLetters(b.ctx, "", 10)
	require.NoError(t, err)
	require.Len(t, dls, 1)
	require.Equal(t, "dl", dls[0].JobID)
	require.Zero(t, b.jobsWaiting(t))
	b.waitStatuses(t, "dl", proto.StatusInQueue, proto.StatusInProgress, proto.StatusFailed)
}

// TestDeadLetterOwedIsPaidByTheNextDelivery: a worker that died between
// its terminal write and the dead letter leaves the debt in the record;
// whoever gets the message next writes the dead letter before the ack.
func TestDeadLetterOwedIsPaidByTheNextDelivery(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.submit(t, job("owed"))
	msg, j := b.next(t)
	cl, err := b.core.Claim(b.ctx, msg, j, lifecycle.Holder{WorkerID: "w1", LeaseTTL: time.Minute})
	require.NoError(t, err)
	// The worker's last words: the terminal write, then it died.
	_, err = b.db.Finish(b.ctx, "owed", cl.Attempt, proto.StatusFailed, nil, "boom", true)
	require.NoError(t, err)
	require.NoError(t, msg.Nak(0)) // its delivery comes back (AckWait, or the sweeper)
	msg, j = b.next(t)
	_, err = b.core.Claim(b.ctx, msg, j, lifecycle.Holder{WorkerID: "w2", LeaseTTL: time.Minute})
	require.ErrorIs(t, err, lifecycle.ErrEnded)
	dls, err := b.q.DeadLetters(b.ctx, "", 10)
	require.NoError(t, err)
	require.Len(t, dls, 1)
	require.Equal(t, "boom", dls[0].Reason)
	require.Zero(t, b.jobsWaiting(t))
	// A repeat (the debt's clearing was lost) stores it once.
	_, err = b.db.Finish(b.ctx, "owed", cl.Attempt, proto.StatusFailed, nil, "boom", true)
	require.NoError(t, err)
	require.NoError(t, b.q.PublishDeadLetter(b.ctx, proto.DefaultPool, "owed", cl.Attempt, msg.Data(), "boom", nil, nil))
	dls, err = b.q.DeadLetters(b.ctx, "", 10)
	require.NoError(t, err)
	require.Len(t, dls, 1, "the same attempt's dead letter is stored once")
}

// TestLeaseLost: a worker whose lease lapsed and whose job another worker
// took learns it at its next renewal, and every write it tries is fenced
// out; the job runs on the new worker.
func TestLeaseLost(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.submit(t, job("j"))
	old := b.claim(t, "w1", 50*time.Millisecond)
	sw, err := b.core.NewSweeper(lifecycle.SweeperConfig{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		require.NoError(t, sw.RunOnce(b.ctx))
		return b.record(t, "j").Status == proto.StatusInQueue
	}, 5*time.Second, 10*time.Millisecond, "the sweeper hands the silent worker's job back")
	cl := b.claim(t, "w2", time.Minute)
	require.Equal(t, 2, cl.Attempt)
	require.ErrorIs(t, b.core.Renew(b.ctx, old), lifecycle.ErrLeaseLost)
	require.ErrorIs(t, b.core.Finish(b.ctx, old, lifecycle.Result{Status: proto.StatusCompleted}), lifecycle.ErrLeaseLost)
	require.ErrorIs(t, b.core.Requeue(b.ctx, old, lifecycle.Requeue{Reason: "late"}), lifecycle.ErrLeaseLost)
	require.NoError(t, b.core.Finish(b.ctx, cl, lifecycle.Result{Status: proto.StatusCompleted, Output: json.RawMessage(`{"images":[]}`)}))
	rec := b.record(t, "j")
	require.Equal(t, proto.StatusCompleted, rec.Status)
	require.Equal(t, "w2", rec.WorkerID)
	errs, err := b.core.AttemptErrors(b.ctx, "j")
	require.NoError(t, err)
	require.Equal(t, []string{"attempt 1: " + proto.MsgLeaseLapsed}, errs)
}

// TestSweeperTimesOutASilentWorkersJob: past its execution deadline plus
// the grace, a silent worker's job ends TIMED_OUT instead of running again.
func TestSweeperTimesOutASilentWorkersJob(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.submit(t, job("hung"))
	msg, j := b.next(t)
	_, err := b.core.Claim(b.ctx, msg, j, lifecycle.Holder{WorkerID: "w1", LeaseTTL: 30 * time.Millisecond, ExecTimeout: 10 * time.Millisecond})
	require.NoError(t, err)
	sw, err := b.core.NewSweeper(lifecycle.SweeperConfig{ExecutionGrace: time.Millisecond})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		require.NoError(t, sw.RunOnce(b.ctx))
		return b.record(t, "hung").Status.Terminal()
	}, 5*time.Second, 10*time.Millisecond)
	rec := b.record(t, "hung")
	require.Equal(t, proto.StatusTimedOut, rec.Status)
	require.Equal(t, proto.MsgWorkerSilent, rec.Error)
	b.waitStatuses(t, "hung", proto.StatusInQueue, proto.StatusInProgress, proto.StatusTimedOut)
	require.Eventually(t, func() bool { return b.jobsWaiting(t) == 0 }, 5*time.Second, 10*time.Millisecond, "the dead worker's delivery is acked")
}

// TestSweeperWaitsAfterAnOutage: after a gap in the sweeps (Redis was
// down) the sweeper leaves lapsed leases alone for LeaseGrace, so the
// workers renew them and keep their jobs at no cost of an attempt.
func TestSweeperWaitsAfterAnOutage(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.submit(t, job("j"))
	sw, err := b.core.NewSweeper(lifecycle.SweeperConfig{LeaseGrace: time.Minute})
	require.NoError(t, err)
	// The first sweep, before the claim: after it, a 30 ms lease may
	// lapse before a sweep on a loaded machine, and that sweep, seeing no
	// gap, would rightly reclaim it.
	require.NoError(t, sw.RunOnce(b.ctx))
	cl := b.claim(t, "w1", 30*time.Millisecond)
	// Redis "was down" for ten seconds: no sweep, no renewal.
	now, err := b.db.Time(b.ctx)
	require.NoError(t, err)
	require.NoError(t, b.db.Client().HSet(b.ctx, b.db.Prefix()+proto.SweepKey, "last", now.Add(-10*time.Second).UnixMilli()).Err())
	require.Eventually(t, func() bool {
		ids, err := b.db.LapsedLeases(b.ctx, 10)
		return err == nil && len(ids) == 1
	}, 5*time.Second, 5*time.Millisecond)
	require.NoError(t, sw.RunOnce(b.ctx))
	require.Equal(t, proto.StatusInProgress, b.record(t, "j").Status, "not reclaimed")
	require.NoError(t, b.core.Renew(b.ctx, cl), "the worker comes back and renews")
	require.NoError(t, b.core.Finish(b.ctx, cl, lifecycle.Result{Status: proto.StatusCompleted, Output: json.RawMessage(`{}`)}))
	rec := b.record(t, "j")
	require.Equal(t, 1, rec.Attempt)
	require.Zero(t, rec.Retries, "the outage cost no attempt")
}

// TestSweeperWaitsAfterItsOwnOutage: a sweeper that could not record a
// sweep for longer than the outage threshold waits too, also when Redis
// came back without its record of the last sweep: the workers could not
// renew meanwhile either.
func TestSweeperWaitsAfterItsOwnOutage(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.submit(t, job("j"))
	sw, err := b.core.NewSweeper(lifecycle.SweeperConfig{LeaseGrace: time.Minute})
	require.NoError(t, err)
	// The first sweep, before the claim (see TestSweeperWaitsAfterAnOutage).
	require.NoError(t, sw.RunOnce(b.ctx))
	start := time.Now()
	cl := b.claim(t, "w1", 30*time.Millisecond)
	// Redis goes away for longer than the threshold (3 s) and comes back
	// without the sweepers' record.
	require.NoError(t, b.db.Client().Del(b.ctx, b.db.Prefix()+proto.SweepKey).Err())
	require.Eventually(t, func() bool {
		ids, err := b.db.LapsedLeases(b.ctx, 10)
		return err == nil && len(ids) == 1 && time.Since(start) > 3100*time.Millisecond
	}, 10*time.Second, 20*time.Millisecond)
	require.NoError(t, sw.RunOnce(b.ctx))
	require.Equal(t, proto.StatusInProgress, b.record(t, "j").Status, "not reclaimed")
	require.NoError(t, b.core.Renew(b.ctx, cl), "the worker comes back and renews")
	require.Equal(t, 1, b.record(t, "j").Attempt, "the outage cost no attempt")
}

// TestSweeperExpiresQueuedJobs: a job still queued past its TTL ends
// TIMED_OUT with its event.
func TestSweeperExpiresQueuedJobs(t *testing.T) {
	t.Parallel()
	b := setup(t)
	j := job("q")
	j.Policy.TTL = 30
	b.submit(t, j)
	sw, err := b.core.NewSweeper(lifecycle.SweeperConfig{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		require.NoError(t, sw.RunOnce(b.ctx))
		return b.record(t, "q").Status == proto.StatusTimedOut
	}, 5*time.Second, 10*time.Millisecond)
	b.waitStatuses(t, "q", proto.StatusInQueue, proto.StatusTimedOut)
}

// TestRetryRearmsTheTTL: a job retried after its first TTL ran out is not
// expired by the sweeper: its TTL counts from the retry.
func TestRetryRearmsTheTTL(t *testing.T) {
	t.Parallel()
	b := setup(t)
	j := job("r")
	j.Policy.TTL = 400
	b.submit(t, j)
	cl := b.claim(t, "w1", time.Minute)
	require.NoError(t, b.core.Finish(b.ctx, cl, lifecycle.Result{Status: proto.StatusFailed, Error: "boom"}))
	first := b.record(t, "r").SubmittedAt
	require.Eventually(t, func() bool {
		now, err := b.db.Time(b.ctx)
		return err == nil && now.After(first.Add(500*time.Millisecond))
	}, 5*time.Second, 10*time.Millisecond, "the first TTL runs out")
	rec, err := b.core.Retry(b.ctx, cl.Job)
	require.NoError(t, err)
	require.Equal(t, proto.StatusInQueue, rec.Status)
	require.True(t, rec.SubmittedAt.After(first))
	sw, err := b.core.NewSweeper(lifecycle.SweeperConfig{})
	require.NoError(t, err)
	require.NoError(t, sw.RunOnce(b.ctx))
	require.Equal(t, proto.StatusInQueue, b.record(t, "r").Status, "not expired by its first TTL")
	cl = b.claim(t, "w2", time.Minute)
	require.Equal(t, 2, cl.Attempt)
	require.NoError(t, b.core.Finish(b.ctx, cl, lifecycle.Result{Status: proto.StatusCompleted, Output: json.RawMessage(`{}`)}))
	require.Equal(t, proto.StatusCompleted, b.record(t, "r").Status)
}

// TestRetryThatCannotBeQueued fails the job again with the reason instead
// of leaving it queued without a message.
func TestRetryThatCannotBeQueued(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.submit(t, job("r"))
	cl := b.claim(t, "w1", time.Minute)
	require.NoError(t, b.core.Finish(b.ctx, cl, lifecycle.Result{Status: proto.StatusFailed, Error: "boom"}))
	j := *cl.Job
	j.Pool = "nopool.x" // a subject no stream holds
	ctx, cancel := context.WithTimeout(b.ctx, 3*time.Second)
	defer cancel()
	_, err := b.core.Retry(ctx, &j)
	require.Error(t, err)
	rec := b.record(t, "r")
	require.Equal(t, proto.StatusFailed, rec.Status)
	require.Contains(t, rec.Error, proto.MsgRetryNotQueued)
}

// TestReplay: a dead letter queues its job again with a fresh attempt
// log and is removed; a second replay of it is refused.
func TestReplay(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.submit(t, job("dead"))
	cl := b.claim(t, "w1", time.Minute)
	require.NoError(t, b.core.Finish(b.ctx, cl, lifecycle.Result{Status: proto.StatusFailed, Error: "boom", DeadLetter: true}))
	dls, err := b.q.DeadLetters(b.ctx, "", 10)
	require.NoError(t, err)
	require.Len(t, dls, 1)
	rep, err := b.core.Replay(b.ctx, dls[0].Seq, nil)
	require.NoError(t, err)
	require.Equal(t, proto.StatusInQueue, rep.Record.Status)
	require.Empty(t, rep.Secrets, "a job without secrets")
	_, err = b.core.Replay(b.ctx, dls[0].Seq, nil)
	require.ErrorIs(t, err, queue.ErrNoDeadLetter)
	cl = b.claim(t, "w1", time.Minute)
	require.Equal(t, 2, cl.Attempt)
	require.Zero(t, cl.Failures, "a fresh attempt log")
}

// TestCancel: a running job's cancel reaches its worker at renewal even
// when the fan-out is missed, and settles its delivery.
func TestCancel(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.submit(t, job("c"))
	cl := b.claim(t, "w1", time.Minute)
	cancels := make(chan string, 1)
	stop, err := b.q.SubscribeCancels(func(id string) { cancels <- id })
	require.NoError(t, err)
	defer stop()
	rec, err := b.core.Cancel(b.ctx, "c")
	require.NoError(t, err)
	require.Equal(t, proto.StatusCancelled, rec.Status)
	select {
	case id := <-cancels:
		require.Equal(t, "c", id)
	case <-time.After(5 * time.Second):
		t.Fatal("no cancel fan-out")
	}
	require.ErrorIs(t, b.core.Renew(b.ctx, cl), lifecycle.ErrEnded)
	require.Zero(t, b.jobsWaiting(t), "the renewal that saw the cancel acked the delivery")
	_, err = b.core.Cancel(b.ctx, "c")
	require.ErrorIs(t, err, rdb.ErrTerminal)
	b.waitStatuses(t, "c", proto.StatusInQueue, proto.StatusInProgress, proto.StatusCancelled)
}

// TestEventSubjects: status events and final events go to their own
// subjects, which a webhook consumer and a runsync waiter filter on.
func TestEventSubjects(t *testing.T) {
	t.Parallel()
	b := setup(t)
	finals := make(chan *proto.Event, 4)
	stop, err := b.q.SubscribeFinal("e", func(ev *proto.Event) { finals <- ev })
	require.NoError(t, err)
	defer stop()
	b.submit(t, job("e"))
	cl := b.claim(t, "w1", time.Minute)
	b.core.Progress(cl, proto.Progress{Value: 1, Max: 1, Percent: 100})
	require.NoError(t, b.core.Finish(b.ctx, cl, lifecycle.Result{Status: proto.StatusCompleted, Output: json.RawMessage(`{}`)}))
	select {
	case ev := <-finals:
		require.Equal(t, proto.StatusCompleted, ev.Status)
	case <-time.After(5 * time.Second):
		t.Fatal("no final event")
	}
	select {
	case ev := <-finals:
		t.Fatalf("a second event on the final subject: %+v", ev)
	case <-time.After(100 * time.Millisecond):
	}
	evs, _, err := b.q.ReadEvents(b.ctx, "e", 0, 10)
	require.NoError(t, err)
	var types []string
	for _, ev := range evs {
		types = append(types, string(ev.Type)+":"+string(ev.Status))
	}
	require.Equal(t, []string{"status:IN_QUEUE", "status:IN_PROGRESS", "progress:", "status:COMPLETED"}, types)
}

// TestConcurrentClaims: many workers get copies of one job's message at
// once; exactly one runs it.
func TestConcurrentClaims(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.submit(t, job("one"))
	msg, j := b.next(t)
	for i := range 5 {
		require.NoError(t, b.q.PublishJob(b.ctx, j, "one.copy."+string(rune('a'+i))))
	}
	msgs := []*queue.Message{msg}
	for range 5 {
		m, _ := b.next(t)
		msgs = append(msgs, m)
	}
	type result struct {
		cl  *lifecycle.Claim
		err error
	}
	results := make(chan result, len(msgs))
	for i, m := range msgs {
		go func() {
			cl, err := b.core.Claim(b.ctx, m, j, lifecycle.Holder{WorkerID: "w" + string(rune('a'+i)), LeaseTTL: time.Minute})
			results <- result{cl, err}
		}()
	}
	won := 0
	for range msgs {
		r := <-results
		switch {
		case r.err == nil:
			won++
		case errors.Is(r.err, lifecycle.ErrHeld):
		default:
			t.Fatalf("claim: %v", r.err)
		}
	}
	require.Equal(t, 1, won)
	assert.Equal(t, 1, b.record(t, "one").Attempt)
}
