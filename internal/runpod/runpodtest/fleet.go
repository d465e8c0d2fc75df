package runpodtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/dispatch"
	"github.com/comfyfleet/comfyfleet/internal/fleet"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/status"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Fleet is a test's own fleet: a fresh NATS server with the contract's
// streams and blob bucket, the test Redis under a key prefix of its own,
// and one dispatcher. Everything stops at the end of the test.
type Fleet struct {
	NATS     *testenv.NATS
	Queue    *queue.Client
	Blobs    blob.Store
	Redis    *redis.Client
	Prefix   string
	Store    *status.Store
	Registry *fleet.Registry
}

// StartFleet starts a fleet with its dispatcher.
func StartFleet(t testing.TB) *Fleet {
	t.Helper()
	n := testenv.StartNATS(t)
	rdb, prefix := testenv.Redis(t)
	f := &Fleet{NATS: n, Redis: rdb, Prefix: prefix}
	f.Queue, f.Blobs = f.Replica(t)
	f.Store = status.NewStore(rdb, status.Options{Prefix: prefix})
	f.Registry = fleet.NewRegistry(rdb, prefix, 0)
	d, err := dispatch.New(dispatch.Config{FetchWait: 200 * time.Millisecond}, f.Queue, f.Store, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("dispatcher: %v", err)
	}
	if err := d.Start(testenv.Context(t, time.Minute)); err != nil {
		t.Fatalf("start dispatcher: %v", err)
	}
	t.Cleanup(d.Stop)
	return f
}

// Replica opens a queue client and blob store on a connection of their
// own, as another process would have.
func (f *Fleet) Replica(t testing.TB) (*queue.Client, blob.Store) {
	t.Helper()
	nc, js := f.NATS.Connect(t)
	q, err := queue.New(nc)
	if err != nil {
		t.Fatalf("queue: %v", err)
	}
	ctx := testenv.Context(t, 30*time.Second)
	if err := q.Ensure(ctx, queue.Config{}); err != nil {
		t.Fatalf("ensure streams: %v", err)
	}
	blobs, err := blob.OpenObjectStore(ctx, js, blob.ObjectStoreConfig{})
	if err != nil {
		t.Fatalf("blob store: %v", err)
	}
	return q, blobs
}

// WaitStatus polls the job's record until it has the status or the
// deadline passes, and returns it.
func (f *Fleet) WaitStatus(t testing.TB, id string, want proto.Status) *proto.Record {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last *proto.Record
	for time.Now().Before(deadline) {
		rec, err := f.Store.Get(context.Background(), id)
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

// FleetWorker takes jobs from the pool like a gpuworker (claim, events,
// fenced finish, ack) and plays each job's Mock instead of running
// ComfyUI.
type FleetWorker struct {
	ID      string
	f       *Fleet
	q       *queue.Client
	cancel  context.CancelFunc
	done    chan struct{}
	mu      sync.Mutex
	jobs    []*proto.Job
	cancels map[string]chan struct{}
}

// StartWorker starts a FleetWorker on the default pool.
func (f *Fleet) StartWorker(t testing.TB, id string) *FleetWorker {
	t.Helper()
	q, blobs := f.Replica(t)
	cons, err := q.OpenLanes(testenv.Context(t, 10*time.Second), proto.DefaultPool, queue.LanesConfig{})
	if err != nil {
		t.Fatalf("open lanes: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &FleetWorker{ID: id, f: f, q: q, cancel: cancel, done: make(chan struct{}), cancels: map[string]chan struct{}{}}
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
		_ = msg.Term()
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
	attempt, _, err := w.f.Store.Claim(fctx, job.ID, w.ID)
	if err != nil {
		_ = msg.Ack(fctx)
		return
	}
	w.event(fctx, &proto.Event{JobID: job.ID, Type: proto.EventStatus, Status: proto.StatusInProgress, Attempt: attempt, WorkerID: w.ID})
	var in struct {
		Mock Mock `json:"mock"`
	}
	_ = json.Unmarshal(job.Input, &in)
	m := in.Mock
	pause := func() bool {
		if m.DelayMS == 0 {
			return true
		}
		select {
		case <-time.After(time.Duration(m.DelayMS) * time.Millisecond):
			return true
		case <-cancelled:
			return false
		case <-ctx.Done():
			return false
		}
	}
	for i := 1; i <= m.Progress; i++ {
		if !pause() {
			break
		}
		w.event(fctx, &proto.Event{JobID: job.ID, Type: proto.EventProgress, Attempt: attempt, WorkerID: w.ID,
			Progress: &proto.Progress{Node: "3", Value: int64(i), Max: int64(m.Progress), Percent: float64(i * 100 / m.Progress)}})
	}
	if m.Hold {
		select {
		case <-cancelled:
		case <-ctx.Done():
		}
	} else if m.Progress == 0 {
		pause()
	}
	to, out, errMsg := proto.StatusCompleted, m.Return, ""
	switch {
	case m.Error != "" || attempt <= m.FailAttempts:
		to, errMsg = proto.StatusFailed, fmt.Sprintf("%s (attempt %d)", m.Error, attempt)
		out, _ = json.Marshal(proto.Failure{Error: errMsg})
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
		out, _ = json.Marshal(proto.Output{Images: []proto.OutputItem{{Filename: "ComfyUI_00001_.png", Type: proto.ItemBase64, NodeID: "9", Mime: "image/png", Size: size, Blob: key}}})
	case len(out) == 0:
		out = json.RawMessage(`{"images":[]}`)
	}
	_, err = w.f.Store.Finish(fctx, job.ID, attempt, to, out, errMsg)
	switch {
	case errors.Is(err, status.ErrStale):
		return
	case err != nil: // cancelled meanwhile, or gone
		_ = msg.Ack(fctx)
		return
	}
	w.event(fctx, &proto.Event{JobID: job.ID, Type: proto.EventStatus, Status: to, Attempt: attempt, WorkerID: w.ID, Error: errMsg})
	_ = msg.Ack(fctx)
}

func (w *FleetWorker) event(ctx context.Context, ev *proto.Event) {
	_ = w.q.PublishEvent(ctx, ev)
}
