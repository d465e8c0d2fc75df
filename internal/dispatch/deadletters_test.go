package dispatch_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/dispatch"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/internal/worker"
	"github.com/comfyfleet/comfyfleet/proto"
)

// deadLetter takes the admitted job off its lane, fails it on attempt 1
// and puts it on the DLQ as a worker does; it returns the DLQ sequence.
func (b *bundle) deadLetter(t *testing.T, id string, attempts []string) uint64 {
	t.Helper()
	ctx := testenv.Context(t, 10*time.Second)
	rec, err := b.store.Get(ctx, id)
	require.NoError(t, err)
	cons, err := b.q.LaneConsumer(ctx, rec.Pool, rec.Lane, queue.ConsumerConfig{})
	require.NoError(t, err)
	msg, err := cons.Next(ctx, 5*time.Second)
	require.NoError(t, err)
	attempt, _, err := b.store.Claim(ctx, id, "w-1")
	require.NoError(t, err)
	last := attempts[len(attempts)-1]
	_, err = b.store.Finish(ctx, id, attempt, proto.StatusFailed, nil, last)
	require.NoError(t, err)
	m := &nats.Msg{Subject: proto.DLQSubject(rec.Pool), Data: msg.Data(), Header: nats.Header{}}
	m.Header.Set(worker.DLQReasonHeader, last)
	data, _ := json.Marshal(attempts)
	m.Header.Set(worker.DLQAttemptsHeader, string(data))
	ack, err := b.nats.JS.PublishMsg(ctx, m)
	require.NoError(t, err)
	require.NoError(t, msg.Ack(ctx))
	return ack.Sequence
}

func TestDeadLettersListAndReplayPastTheDedupeWindow(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	ctx := testenv.Context(t, 30*time.Second)
	d := b.sweeper(t, dispatch.Config{})
	dl := dispatch.NewDeadLetters(b.q, b.store)
	b.admit(t, d, "dead-1")
	errs := []string{"attempt 1: ComfyUI ran out of memory", "attempt 2: ComfyUI ran out of memory", "attempt 3: Job processing failed"}
	_, err := b.store.AddAttemptError(ctx, "dead-1", 1, "ComfyUI ran out of memory")
	require.NoError(t, err)
	seq := b.deadLetter(t, "dead-1", errs)

	list, err := dl.List(ctx, "", 0)
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Equal(t, dispatch.DeadLetter{Seq: seq, Pool: proto.DefaultPool, JobID: "dead-1", Reason: errs[2], Attempts: errs, Time: list[0].Time}, list[0])
	other, err := dl.List(ctx, "other-pool", 0)
	require.NoError(t, err)
	require.Empty(t, other)

	// Replayed twice within JetStream's dedupe window: both reach a lane.
	for round := 1; round <= 2; round++ {
		rec, err := dl.Replay(ctx, seq)
		require.NoError(t, err, "round %d", round)
		require.Equal(t, proto.StatusInQueue, rec.Status)
		log, err := b.store.AttemptErrors(ctx, "dead-1")
		require.NoError(t, err)
		require.Empty(t, log, "a replay starts with a fresh attempt log")
		left, err := dl.List(ctx, "", 0)
		require.NoError(t, err)
		require.Empty(t, left, "a replayed dead letter leaves the DLQ")
		_, err = dl.Replay(ctx, seq)
		require.ErrorIs(t, err, dispatch.ErrNoDeadLetter)
		seq = b.deadLetter(t, "dead-1", errs)
	}
}

func TestDeadLettersHTTP(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	d := b.sweeper(t, dispatch.Config{})
	b.admit(t, d, "dead-http")
	seq := b.deadLetter(t, "dead-http", []string{"attempt 1: boom"})
	mux := http.NewServeMux()
	for _, r := range dispatch.NewDeadLetters(b.q, b.store).Routes() {
		mux.Handle(r.Pattern, r.Handler)
	}
	srv := httptest.NewServer(mux)
	defer srv.Close()

	call := func(method, path string) (int, string) {
		req, err := http.NewRequestWithContext(context.Background(), method, srv.URL+path, nil)
		require.NoError(t, err)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(body)
	}
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
