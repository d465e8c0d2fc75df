package runpod_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/internal/runpod/runpodtest"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// commandCounter counts the commands a Redis client sends to the real
// server (pipelines by their commands), but those that set up a new
// connection of the pool (HELLO, CLIENT SETINFO), which come and go with
// the number of concurrent requests.
type commandCounter struct{ n atomic.Int64 }

func (c *commandCounter) count(cmd redis.Cmder) {
	switch cmd.Name() {
	case "hello", "client", "auth", "select", "ping":
	default:
		c.n.Add(1)
	}
}

func (c *commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.count(cmd)
		return next(ctx, cmd)
	}
}

func (c *commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			c.count(cmd)
		}
		return next(ctx, cmds)
	}
}

// waitBundle is one API replica over a fleet, with its own Redis client
// whose commands are counted, and a job that the test itself runs through
// the core (claim, progress, chunks, finish) so that it decides when each
// event happens.
type waitBundle struct {
	fleet *runpodtest.Fleet
	stack *stack
	cmds  *commandCounter
	claim *lifecycle.Claim
	ctx   context.Context
}

func setupWait(t *testing.T) *waitBundle {
	t.Helper()
	f := runpodtest.StartFleet(t)
	opts, err := redis.ParseURL(testenv.RedisURL())
	require.NoError(t, err)
	client := redis.NewClient(opts)
	t.Cleanup(func() { client.Close() })
	cmds := &commandCounter{}
	client.AddHook(cmds)
	db := rdb.New(client, rdb.Options{Prefix: f.Prefix})
	q, _ := f.Replica(t)
	log := zaptest.NewLogger(t)
	api := runpod.NewAPI(runpod.Config{}, runpod.Deps{Queue: q, Core: lifecycle.New(db, q, log), DB: db, Blobs: q.Blobs(), Logger: log})
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)
	b := &waitBundle{fleet: f, stack: &stack{fleet: f, urls: []string{srv.URL}}, cmds: cmds, ctx: testenv.Context(t, time.Minute)}

	id := b.stack.run(t, runpodtest.Input(runpodtest.Mock{}))
	lanes, err := f.Queue.OpenLanes(b.ctx, proto.DefaultPool, queue.LanesConfig{})
	require.NoError(t, err)
	msg, err := lanes.Next(b.ctx, 10*time.Second)
	require.NoError(t, err)
	job, err := proto.DecodeJob(msg.Data())
	require.NoError(t, err)
	require.Equal(t, id, job.ID)
	b.claim, err = f.Core.Claim(b.ctx, msg, job, lifecycle.Holder{WorkerID: "w1", LeaseTTL: time.Minute})
	require.NoError(t, err)
	// Drain what the stream holds so far (its status events).
	code, out := b.stack.call(t, 0, "GET", "/stream/"+id+"?wait=0", "")
	require.Equal(t, 200, code)
	require.Equal(t, "IN_PROGRESS", out["status"])
	return b
}

// hold starts n held calls of path and returns their answers as they
// come; it returns once every call has made its first reads, which are
// perCall Redis commands each.
func (b *waitBundle) hold(t *testing.T, n int, path string, perCall int64) <-chan map[string]any {
	t.Helper()
	out := make(chan map[string]any, n)
	before := b.cmds.n.Load()
	for range n {
		go func() { out <- get(b.stack.urls[0] + path) }()
	}
	want := before + int64(n)*perCall
	require.Eventually(t, func() bool { return b.cmds.n.Load() >= want }, 20*time.Second, 5*time.Millisecond,
		"the held calls made their first reads")
	return out
}

// get answers the JSON body of a GET, or {"test_error": why}; it runs off
// the test's goroutine, so it does not fail the test itself.
func get(url string) map[string]any {
	resp, err := http.Get(url)
	if err != nil {
		return map[string]any{"test_error": err.Error()}
	}
	defer resp.Body.Close()
	var v map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return map[string]any{"test_error": err.Error()}
	}
	return v
}

func (b *waitBundle) answer(t *testing.T, c <-chan map[string]any) map[string]any {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-b.ctx.Done():
		t.Fatal("a held call did not answer")
		return nil
	}
}

// TestHeldStreamWakesOnEvents: a /stream held for 20 s answers as soon as
// a progress event, a stream chunk or the final status arrives, with it.
func TestHeldStreamWakesOnEvents(t *testing.T) {
	t.Parallel()
	b := setupWait(t)
	id := b.claim.JobID
	path := "/v2/ep/stream/" + id + "?wait=20000"

	held := b.hold(t, 1, path, 2)
	b.fleet.Core.Progress(b.claim, proto.Progress{Node: "3", Value: 1, Max: 4})
	out := b.answer(t, held)
	require.Equal(t, "IN_PROGRESS", out["status"])
	require.Equal(t, []any{map[string]any{"output": map[string]any{"type": "progress", "node": "3", "value": float64(1), "max": float64(4), "percent": float64(0)}}}, out["stream"])

	held = b.hold(t, 1, path, 2)
	require.NoError(t, b.fleet.Core.Chunk(b.ctx, b.claim, proto.EventStream, json.RawMessage(`{"text":"half way"}`)))
	out = b.answer(t, held)
	require.Equal(t, []any{map[string]any{"output": map[string]any{"text": "half way"}}}, out["stream"])

	held = b.hold(t, 1, path, 2)
	sync := b.hold(t, 1, "/v2/ep/status-sync/"+id+"?wait=20000", 2)
	require.NoError(t, b.fleet.Core.Finish(b.ctx, b.claim, lifecycle.Result{Status: proto.StatusCompleted, Output: json.RawMessage(`{"images":[]}`)}))
	require.Equal(t, "COMPLETED", b.answer(t, held)["status"])
	require.Equal(t, "COMPLETED", b.answer(t, sync)["status"])
}

// TestHeldWaitersCostNoPeriodicWork replays the finding that 200 held
// /stream?wait=20000 calls cost a third of a core, each reading the job
// every 100 ms: 50 held /stream calls and 10 held /status-sync calls make
// their first reads and then not one Redis command while nothing happens
// (they wake on the job's events), and all answer once the job ends.
func TestHeldWaitersCostNoPeriodicWork(t *testing.T) {
	t.Parallel()
	b := setupWait(t)
	id := b.claim.JobID
	streams := b.hold(t, 50, "/stream/"+id+"?wait=20000", 2) // the record, the cursor
	syncs := b.hold(t, 10, "/status-sync/"+id+"?wait=20000", 2)
	before := b.cmds.n.Load()
	select {
	case <-time.After(1500 * time.Millisecond): // the window observed
	case v := <-streams:
		t.Fatalf("a held /stream answered while nothing happened: %v", v)
	}
	require.Equal(t, before, b.cmds.n.Load(), "Redis commands of 60 idle held calls over 1.5 s")

	require.NoError(t, b.fleet.Core.Finish(b.ctx, b.claim, lifecycle.Result{Status: proto.StatusCompleted, Output: json.RawMessage(`{"images":[]}`)}))
	for range 50 {
		require.Equal(t, "COMPLETED", b.answer(t, streams)["status"])
	}
	for range 10 {
		require.Equal(t, "COMPLETED", b.answer(t, syncs)["status"])
	}
}
