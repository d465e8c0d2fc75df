package dispatch_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/dispatch"
	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// deadLetter plays a worker on which the admitted job fails once per
// reason, each failure counted, until the last one uses up its attempts:
// the lifecycle core then fails it and puts it on its pool's dead-letter
// stream. It returns the job's attempt log as the dead letter carries it.
func (b *bundle) deadLetter(t *testing.T, id string, reasons ...string) []string {
	t.Helper()
	ctx := testenv.Context(t, 20*time.Second)
	rec, err := b.db.Get(ctx, id)
	require.NoError(t, err)
	cons, err := b.q.LaneConsumer(ctx, rec.Pool, rec.Lane, queue.ConsumerConfig{})
	require.NoError(t, err)
	var attempts []string
	for _, reason := range reasons {
		msg, err := cons.Next(ctx, 5*time.Second)
		require.NoError(t, err)
		job, err := proto.DecodeJob(msg.Data())
		require.NoError(t, err)
		cl, err := b.core.Claim(ctx, msg, job, lifecycle.Holder{WorkerID: "w-1", LeaseTTL: time.Minute, MaxAttempts: len(reasons)})
		require.NoError(t, err)
		attempts = append(attempts, fmt.Sprintf("attempt %d: %s", cl.Attempt, reason))
		require.NoError(t, b.core.Requeue(ctx, cl, lifecycle.Requeue{Reason: reason, Counted: true,
			Final: lifecycle.Result{Status: proto.StatusFailed, Error: "Job processing failed"}}))
	}
	rec, err = b.db.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, proto.StatusFailed, rec.Status)
	return attempts
}

// dlqServer serves the dispatcher's routes.
func (b *bundle) dlqServer(t *testing.T) func(method, path string, body ...string) (int, string) {
	t.Helper()
	srv := httptest.NewServer(dispatch.NewMux(dispatch.DeadLetterRoutes(b.q, b.core, zaptest.NewLogger(t))))
	t.Cleanup(srv.Close)
	return func(method, path string, body ...string) (int, string) {
		t.Helper()
		var rd io.Reader
		if len(body) > 0 {
			rd = strings.NewReader(body[0])
		}
		req, err := http.NewRequestWithContext(context.Background(), method, srv.URL+path, rd)
		require.NoError(t, err)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(data)
	}
}

type dlqList struct {
	DeadLetters []queue.DeadLetter `json:"dead_letters"`
}

func TestDeadLettersListAndReplayPastTheDedupeWindow(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	ctx := testenv.Context(t, 30*time.Second)
	d := b.sweeper(t, dispatch.Config{})
	call := b.dlqServer(t)
	list := func(query string) []queue.DeadLetter {
		t.Helper()
		code, body := call("GET", "/dlq"+query)
		require.Equal(t, http.StatusOK, code, body)
		var l dlqList
		require.NoError(t, json.Unmarshal([]byte(body), &l), body)
		return l.DeadLetters
	}
	b.admit(t, d, "dead-1")
	reasons := []string{"ComfyUI ran out of memory", "ComfyUI ran out of memory", "ComfyUI stopped answering"}
	errs := b.deadLetter(t, "dead-1", reasons...)

	got := list("")
	require.Len(t, got, 1)
	seq := got[0].Seq
	require.Equal(t, queue.DeadLetter{Seq: seq, Pool: proto.DefaultPool, JobID: "dead-1", Reason: "Job processing failed", Attempts: errs, Time: got[0].Time}, got[0])
	require.Equal(t, []string{"attempt 1: ComfyUI ran out of memory", "attempt 2: ComfyUI ran out of memory", "attempt 3: ComfyUI stopped answering"}, errs)
	require.Empty(t, list("?pool=other-pool"))

	// Replayed twice within JetStream's dedupe window: both reach a lane.
	for round := 1; round <= 2; round++ {
		code, body := call("POST", fmt.Sprintf("/dlq/%d/replay", seq))
		require.Equal(t, http.StatusOK, code, "round %d: %s", round, body)
		require.Contains(t, body, `"status":"IN_QUEUE"`)
		rec, err := b.db.Get(ctx, "dead-1")
		require.NoError(t, err)
		require.Equal(t, proto.StatusInQueue, rec.Status)
		log, err := b.db.AttemptErrors(ctx, "dead-1")
		require.NoError(t, err)
		require.Empty(t, log, "a replay starts with a fresh attempt log")
		require.Empty(t, list(""), "a replayed dead letter leaves the DLQ")
		code, body = call("POST", fmt.Sprintf("/dlq/%d/replay", seq))
		require.Equal(t, http.StatusNotFound, code, body)
		errs = b.deadLetter(t, "dead-1", reasons...) // the replayed job is on its lane again
		got = list("")
		require.Len(t, got, 1, "round %d", round)
		require.Equal(t, errs, got[0].Attempts, "round %d", round)
		seq = got[0].Seq
	}
}

func TestDeadLettersHTTP(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	d := b.sweeper(t, dispatch.Config{})
	b.admit(t, d, "dead-http")
	b.deadLetter(t, "dead-http", "boom")
	call := b.dlqServer(t)
	_, body := call("GET", "/dlq")
	var l dlqList
	require.NoError(t, json.Unmarshal([]byte(body), &l), body)
	require.Len(t, l.DeadLetters, 1)
	seq := l.DeadLetters[0].Seq

	tests := []struct {
		name, method, path string
		code               int
		contains           string
	}{
		{"list", "GET", "/dlq", 200, `"job_id":"dead-http"`},
		{"list of a pool", "GET", "/dlq?pool=default&limit=5", 200, `"attempts":["attempt 1: boom"]`},
		{"bad pool", "GET", "/dlq?pool=a.b", 400, `"error"`},
		{"bad limit", "GET", "/dlq?limit=x", 400, `limit`},
		{"bad seq", "POST", "/dlq/x/replay", 400, `sequence number`},
		{"no such seq", "POST", "/dlq/999/replay", 404, `no such dead letter`},
		{"replay", "POST", fmt.Sprintf("/dlq/%d/replay", seq), 200, `"status":"IN_QUEUE"`},
		{"replayed already", "POST", fmt.Sprintf("/dlq/%d/replay", seq), 404, `no such dead letter`},
		{"empty", "GET", "/dlq", 200, `{"dead_letters":[]}`},
	}
	for _, tt := range tests {
		code, body := call(tt.method, tt.path)
		require.Equal(t, tt.code, code, "%s: %s", tt.name, body)
		require.Contains(t, body, tt.contains, tt.name)
	}
}

// TestReplayTakesTheSecretsAgain: a dead letter lists the secrets its job
// lost; its replay takes them in its body, or runs with the worker's own
// settings, and says which, never echoing a secret.
func TestReplayTakesTheSecretsAgain(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	ctx := testenv.Context(t, 30*time.Second)
	d := b.sweeper(t, dispatch.Config{})
	job := &proto.Job{ID: "secret-job", Input: json.RawMessage(fmt.Sprintf(`{"workflow":%s,"comfy_org_api_key":"ck-old-secret"}`, workflow)),
		S3Config: &proto.S3Config{AccessID: "id-old", AccessSecret: "s3-old-secret", BucketName: "b", EndpointURL: "https://s3.example.com"}}
	_, err := b.q.Submit(ctx, proto.SourceAPI, job)
	require.NoError(t, err)
	cons, err := b.q.IntakeConsumer(ctx, queue.ConsumerConfig{})
	require.NoError(t, err)
	msg, err := cons.Next(ctx, 5*time.Second)
	require.NoError(t, err)
	require.NoError(t, d.Admit(ctx, msg))
	b.deadLetter(t, "secret-job", "boom")
	call := b.dlqServer(t)

	code, body := call("GET", "/dlq")
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, body, `"secrets_removed":["input.comfy_org_api_key","s3Config.accessId","s3Config.accessSecret"]`)
	var l dlqList
	require.NoError(t, json.Unmarshal([]byte(body), &l))
	path := fmt.Sprintf("/dlq/%d/replay", l.DeadLetters[0].Seq)

	for _, bad := range []string{`{"s3Config":{"accessId":"a"}}`, `{"comfy_org_api_key":12}`, `[]`, `{"s3Config":{"accessId":"a","accessSecret":"s","endpointUrl":"http://127.0.0.1"}}`} {
		code, body := call("POST", path, bad)
		require.Equal(t, http.StatusBadRequest, code, "%s: %s", bad, body)
	}
	code, body = call("POST", path, `{"comfy_org_api_key":"ck-new-secret"}`)
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, body, `"secrets":{"comfy_org_api_key":"supplied","s3Config":"worker"}`)
	require.NotContains(t, body, "secret\"", "no secret in the answer")
	for _, s := range []string{"ck-new-secret", "ck-old-secret", "s3-old-secret"} {
		require.NotContains(t, body, s)
	}
	rec, err := b.db.Get(ctx, "secret-job")
	require.NoError(t, err)
	lanes, err := b.q.LaneConsumer(ctx, rec.Pool, rec.Lane, queue.ConsumerConfig{})
	require.NoError(t, err)
	m, err := lanes.Next(ctx, 5*time.Second)
	require.NoError(t, err)
	require.Contains(t, string(m.Data()), `"comfy_org_api_key":"ck-new-secret"`, "the replay runs with the key given")
	require.NotContains(t, string(m.Data()), "s3Config", "and the worker's own bucket")
}
