package runpodtest

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Fleet is a test's own fleet: a fresh NATS server with the contract's
// streams and buckets, the test Redis under a key prefix of its own, the
// lifecycle core on them, and an admission loop in place of a dispatcher
// (the RunPod role's tests need no control plane beyond admission).
// Everything stops at the end of the test.
type Fleet struct {
	NATS   *testenv.NATS
	Queue  *queue.Client
	Blobs  blob.Store
	DB     *rdb.DB
	Core   *lifecycle.Core
	Redis  *redis.Client
	Prefix string
}

// StartFleet starts a fleet with its admission loop.
func StartFleet(t testing.TB) *Fleet {
	t.Helper()
	n := testenv.StartNATS(t)
	client, prefix := testenv.Redis(t)
	f := &Fleet{NATS: n, Redis: client, Prefix: prefix}
	f.Queue, f.Blobs = f.Replica(t)
	f.DB = rdb.New(client, rdb.Options{Prefix: prefix})
	f.Core = lifecycle.New(f.DB, f.Queue, zaptest.NewLogger(t))
	cons, err := f.Queue.IntakeConsumer(testenv.Context(t, 10*time.Second), queue.ConsumerConfig{})
	if err != nil {
		t.Fatalf("intake consumer: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			msg, err := cons.Next(ctx, 200*time.Millisecond)
			if err != nil {
				continue
			}
			if _, _, err := f.Core.Admit(context.WithoutCancel(ctx), msg, lifecycle.AdmitOptions{DefaultPool: proto.DefaultPool}); err != nil {
				_ = msg.Nak(50 * time.Millisecond)
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return f
}

// Replica opens a queue client (with the blob store) on a connection of
// its own, as another process would have.
func (f *Fleet) Replica(t testing.TB) (*queue.Client, blob.Store) {
	t.Helper()
	nc, _ := f.NATS.Connect(t)
	q, err := queue.New(nc)
	if err != nil {
		t.Fatalf("queue: %v", err)
	}
	if err := q.Ensure(testenv.Context(t, 30*time.Second), queue.Config{}); err != nil {
		t.Fatalf("ensure streams: %v", err)
	}
	return q, q.Blobs()
}

// ReplicaCore opens a queue client and a lifecycle core on a connection
// of their own.
func (f *Fleet) ReplicaCore(t testing.TB) (*queue.Client, *lifecycle.Core) {
	t.Helper()
	q, _ := f.Replica(t)
	return q, lifecycle.New(f.DB, q, zaptest.NewLogger(t))
}

// StartSweeper runs a sweeper on the fleet's core until the test ends, as
// every dispatcher does: it expires queued jobs past their TTL and gives
// back the jobs of workers (gpuworkers and RunPod workers alike) whose
// lease lapsed.
func (f *Fleet) StartSweeper(t testing.TB, cfg lifecycle.SweeperConfig) *lifecycle.Sweeper {
	t.Helper()
	s, err := f.Core.NewSweeper(cfg)
	if err != nil {
		t.Fatalf("sweeper: %v", err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatalf("start sweeper: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// WaitStatus polls the job's record until it has the status or the
// deadline passes, and returns it.
func (f *Fleet) WaitStatus(t testing.TB, id string, want proto.Status) *proto.Record {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last *proto.Record
	for time.Now().Before(deadline) {
		rec, err := f.DB.Get(context.Background(), id)
		if err == nil {
			last = rec
			if rec.Status == want {
				return rec
			}
		}
		wait(20 * time.Millisecond)
	}
	t.Fatalf("job %s never reached %s; last record %+v", id, want, last)
	return nil
}

// wait pauses a poll loop; polling with a deadline is how the tests wait
// for state they cannot be told about.
func wait(d time.Duration) { <-time.After(d) }

// Mock is what a job input's "mock" field asks the FleetWorker to do. The
// input also needs a "workflow" object, so the dispatcher admits it.
type Mock struct {
	// Return is the output of a successful job; absent means
	// {"images": []}.
	Return json.RawMessage `json:"return,omitempty"`
	// Error fails the job with this message.
	Error string `json:"error,omitempty"`
	// FailAttempts fails the first n attempts (then Return).
	FailAttempts int `json:"fail_attempts,omitempty"`
	// Progress publishes this many progress events, DelayMS apart.
	Progress int `json:"progress,omitempty"`
	// DelayMS waits this long before finishing (and between progress
	// events).
	DelayMS int `json:"delay_ms,omitempty"`
	// Hold keeps the job running until it is cancelled.
	Hold bool `json:"hold,omitempty"`
	// Image, base64, is stored in the blob store and returned as a
	// base64 output item of that many bytes.
	Image string `json:"image,omitempty"`
	// ImageSize overrides the size the output item claims.
	ImageSize int64 `json:"image_size,omitempty"`
}

// Input builds a job input that runs m.
func Input(m Mock) json.RawMessage {
	data, _ := json.Marshal(map[string]any{"workflow": map[string]any{"9": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{}}}, "mock": m})
	return data
}

// FleetWorker takes jobs from the pool like a gpuworker, through the
// lifecycle core (claim, lease, progress, fenced finish), and plays each
// job's Mock instead of running ComfyUI.
type FleetWorker struct {
	ID      string
	f       *Fleet
	q       *queue.Client
	core    *lifecycle.Core
	cancel  context.CancelFunc
	done    chan struct{}
	mu      sync.Mutex
	jobs    []*proto.Job
	cancels map[string]chan struct{}
}

// StartWorker starts a FleetWorker on the default pool.
func (f *Fleet) StartWorker(t testing.TB, id string) *FleetWorker {
	t.Helper()
	return f.startWorker(t, id, proto.DefaultPool, nil, false)
}

// StartPoolWorker starts a FleetWorker that takes the jobs of pool and
// then of more (as a gpuworker with POOL=pool,more…), and announces
// itself idle in the fleet registry under those pools, so /health counts
// it.
func (f *Fleet) StartPoolWorker(t testing.TB, id, pool string, more ...string) *FleetWorker {
	t.Helper()
	return f.startWorker(t, id, pool, more, true)
}

func (f *Fleet) startWorker(t testing.TB, id, pool string, more []string, announce bool) *FleetWorker {
	t.Helper()
	q, core := f.ReplicaCore(t)
	blobs := q.Blobs()
	cons, err := q.OpenLanes(testenv.Context(t, 10*time.Second), pool, queue.LanesConfig{MorePools: more})
	if err != nil {
		t.Fatalf("open lanes: %v", err)
	}
	if announce {
		if err := f.DB.Beat(testenv.Context(t, 10*time.Second), proto.Heartbeat{ID: id, Pool: pool, MorePools: more, State: proto.WorkerIdle}); err != nil {
			t.Fatalf("announce worker: %v", err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &FleetWorker{ID: id, f: f, q: q, core: core, cancel: cancel, done: make(chan struct{}), cancels: map[string]chan struct{}{}}
	stop, err := q.SubscribeCancels(func(jobID string) {
		w.mu.Lock()
		defer w.mu.Unlock()
		if c, ok := w.cancels[jobID]; ok {
			close(c)
			delete(w.cancels, jobID)
		}
	})
	if err != nil {
		t.Fatalf("subscribe cancels: %v", err)
	}
	var running sync.WaitGroup
	go func() {
		defer close(w.done)
		defer running.Wait()
		for ctx.Err() == nil {
			msg, err := cons.Next(ctx, 200*time.Millisecond)
			if err != nil {
				continue
			}
			running.Add(1)
			go func() {
				defer running.Done()
				w.handle(ctx, blobs, msg)
			}()
		}
	}()
	t.Cleanup(func() { cancel(); <-w.done; stop() })
	return w
}

// Jobs are the job messages the worker received, in order.
func (w *FleetWorker) Jobs() []*proto.Job {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]*proto.Job(nil), w.jobs...)
}

func (w *FleetWorker) handle(ctx context.Context, blobs blob.Store, msg *queue.Message) {
	fctx := context.WithoutCancel(ctx)
	job, err := proto.DecodeJob(msg.Data())
	if err != nil {
		w.core.Discard(fctx, msg, err.Error())
		return
	}
	w.mu.Lock()
	w.jobs = append(w.jobs, job)
	cancelled := make(chan struct{})
	w.cancels[job.ID] = cancelled
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		delete(w.cancels, job.ID)
		w.mu.Unlock()
	}()
	cl, err := w.core.Claim(fctx, msg, job, lifecycle.Holder{WorkerID: w.ID, LeaseTTL: 15 * time.Second})
	if err != nil {
		return
	}
	attempt := cl.Attempt
	var in struct {
		Mock Mock `json:"mock"`
	}
	_ = json.Unmarshal(job.Input, &in)
	m := in.Mock
	stopped := false
	pause := func() bool {
		if m.DelayMS == 0 {
			return true
		}
		select {
		case <-time.After(time.Duration(m.DelayMS) * time.Millisecond):
			return true
		case <-cancelled:
			stopped = true
			return false
		case <-ctx.Done():
			return false
		}
	}
	for i := 1; i <= m.Progress; i++ {
		if !pause() {
			break
		}
		w.core.Progress(cl, proto.Progress{Node: "3", Value: int64(i), Max: int64(m.Progress), Percent: float64(i * 100 / m.Progress)})
	}
	if m.Hold {
		select {
		case <-cancelled:
			stopped = true
		case <-ctx.Done():
		}
	} else if m.Progress == 0 {
		pause()
	}
	if stopped {
		w.core.Cancelled(fctx, cl)
		return
	}
	res := lifecycle.Result{Status: proto.StatusCompleted, Output: m.Return}
	switch {
	case m.Error != "" || attempt <= m.FailAttempts:
		res.Status, res.Error = proto.StatusFailed, fmt.Sprintf("%s (attempt %d)", m.Error, attempt)
		res.Output, _ = json.Marshal(proto.Failure{Error: res.Error})
	case m.Image != "":
		key := blob.OutputKey(job.ID, attempt, "9", "ComfyUI_00001_.png")
		data, _ := decodeB64(m.Image)
		info, err := blobs.Put(fctx, key, "image/png", bytesReader(data))
		if err != nil {
			panic(err)
		}
		size := info.Size
		if m.ImageSize > 0 {
			size = m.ImageSize
		}
		res.Output, _ = json.Marshal(proto.Output{Images: []proto.OutputItem{{Filename: "ComfyUI_00001_.png", Type: proto.ItemBase64, NodeID: "9", Mime: "image/png", Size: size, Blob: key}}})
	case len(res.Output) == 0:
		res.Output = json.RawMessage(`{"images":[]}`)
	}
	_ = w.core.Finish(fctx, cl, res)
}
