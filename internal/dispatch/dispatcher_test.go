package dispatch_test

import (
	"context"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/dispatch"
	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

type bundle struct {
	nats *testenv.NATS
	q    *queue.Client
	db   *rdb.DB
	core *lifecycle.Core
}

// setup starts a NATS server with the streams, a DB on the test Redis,
// and n dispatcher replicas, each with its own connection and lifecycle
// core, as role.NewDispatcher builds them.
func setup(t *testing.T, replicas int) *bundle {
	t.Helper()
	n := testenv.StartNATS(t)
	rc, prefix := testenv.Redis(t)
	db := rdb.New(rc, rdb.Options{Prefix: prefix})
	q, err := queue.New(n.Conn)
	require.NoError(t, err)
	ctx := testenv.Context(t, 30*time.Second)
	require.NoError(t, q.Ensure(ctx, queue.Config{}))
	b := &bundle{nats: n, q: q, db: db, core: lifecycle.New(db, q, zaptest.NewLogger(t))}
	for range replicas {
		b.start(t, dispatch.Admission{})
	}
	return b
}

// start runs one more dispatcher replica on its own connection; its
// cleanup stops it.
func (b *bundle) start(t *testing.T, adm dispatch.Admission) *dispatch.Dispatcher {
	t.Helper()
	return b.startWith(t, dispatch.Config{FetchWait: 200 * time.Millisecond}, adm)
}

// startWith is start with a configuration of the test's.
func (b *bundle) startWith(t *testing.T, cfg dispatch.Config, adm dispatch.Admission) *dispatch.Dispatcher {
	t.Helper()
	nc, _ := b.nats.Connect(t)
	rq, err := queue.New(nc)
	require.NoError(t, err)
	log := zaptest.NewLogger(t)
	d, err := dispatch.New(cfg, rq, lifecycle.New(b.db, rq, log), adm, log)
	require.NoError(t, err)
	require.NoError(t, d.Start(testenv.Context(t, 30*time.Second)))
	t.Cleanup(d.Stop)
	return d
}

func (b *bundle) submit(t *testing.T, source string, body string, id string) {
	t.Helper()
	ctx := testenv.Context(t, 10*time.Second)
	msg := &nats.Msg{Subject: proto.SubmitSubject(source, ""), Data: []byte(body), Header: nats.Header{}}
	if id != "" {
		msg.Header.Set(proto.MsgIDHeader, id)
	}
	_, err := b.nats.JS.PublishMsg(ctx, msg)
	require.NoError(t, err)
}

// waitRecord polls the status record until it satisfies ok.
func (b *bundle) waitRecord(t *testing.T, id string, ok func(*proto.Record) bool) *proto.Record {
	t.Helper()
	var rec *proto.Record
	require.Eventually(t, func() bool {
		r, err := b.db.Get(context.Background(), id)
		if err != nil {
			return false
		}
		rec = r
		return ok(r)
	}, 10*time.Second, 10*time.Millisecond, "record of %s", id)
	return rec
}

// streamMsgs counts a stream's messages. It is called inside
// require.Eventually, off the test's goroutine: an error fails the test
// without stopping that goroutine, and counts as no number at all.
func (b *bundle) streamMsgs(t *testing.T, stream string) uint64 {
	t.Helper()
	s, err := b.nats.JS.Stream(context.Background(), stream)
	if err != nil {
		t.Errorf("stream %s: %v", stream, err)
		return math.MaxUint64
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Errorf("stream %s: %v", stream, err)
		return math.MaxUint64
	}
	return info.State.Msgs
}

const workflow = `{"9":{"class_type":"SaveImage","inputs":{"images":["8",0]}},"3":{"class_type":"KSampler","inputs":{"seed":18446744073709551615}}}`

func TestAdmitsValidJob(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	events := make(chan *proto.Event, 4)
	stop, err := b.q.SubscribeEvents("job-1", func(e *proto.Event) { events <- e })
	require.NoError(t, err)
	defer stop()

	b.submit(t, proto.SourceBatch, `{"v":1,"id":"job-1","input":{"workflow":`+workflow+`},"batch_id":"b1"}`, "job-1")

	rec := b.waitRecord(t, "job-1", func(r *proto.Record) bool { return true })
	require.Equal(t, proto.StatusInQueue, rec.Status)
	require.Equal(t, proto.LaneBatch, rec.Lane)
	require.Equal(t, proto.DefaultPool, rec.Pool)
	require.Equal(t, proto.SourceBatch, rec.Source)
	require.Equal(t, "b1", rec.BatchID)
	select {
	case ev := <-events:
		require.Equal(t, proto.EventStatus, ev.Type)
		require.Equal(t, proto.StatusInQueue, ev.Status)
	case <-time.After(10 * time.Second):
		t.Fatal("no IN_QUEUE event")
	}

	// The job is on the batch lane of the default pool, byte for byte
	// (published last, after its IN_QUEUE event).
	require.Eventually(t, func() bool { return b.streamMsgs(t, proto.JobsStream) == 1 }, 5*time.Second, 10*time.Millisecond, "job on its lane")
	s, err := b.nats.JS.Stream(context.Background(), proto.JobsStream)
	require.NoError(t, err)
	m, err := s.GetLastMsgForSubject(context.Background(), proto.JobSubject(proto.DefaultPool, proto.LaneBatch))
	require.NoError(t, err)
	job, err := proto.DecodeJob(m.Data)
	require.NoError(t, err)
	require.Contains(t, string(job.Input), "18446744073709551615")
	require.Equal(t, proto.SourceBatch, job.Source)
	require.Eventually(t, func() bool { return b.streamMsgs(t, proto.SubmitStream) == 0 }, 5*time.Second, 10*time.Millisecond, "intake message acked")
}

func TestLanes(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	tests := []struct {
		name, source, extra string
		want                proto.Lane
	}{
		{name: "api is interactive", source: proto.SourceAPI, want: proto.LaneInteractive},
		{name: "batch is batch", source: proto.SourceBatch, want: proto.LaneBatch},
		{name: "lowPriority api is batch", source: proto.SourceAPI, extra: `,"policy":{"lowPriority":true}`, want: proto.LaneBatch},
		{name: "explicit lane wins", source: proto.SourceBatch, extra: `,"lane":"interactive"`, want: proto.LaneInteractive},
	}
	for i, tt := range tests {
		id := fmt.Sprintf("lane-%d", i)
		b.submit(t, tt.source, `{"id":"`+id+`","input":{"workflow":{}}`+tt.extra+`}`, id)
		rec := b.waitRecord(t, id, func(*proto.Record) bool { return true })
		require.Equal(t, tt.want, rec.Lane, tt.name)
	}
}

func TestInvalidInputFailsWithReason(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	b.submit(t, proto.SourceBatch, `{"id":"bad-1","input":{"images":[]}}`, "bad-1")
	rec := b.waitRecord(t, "bad-1", func(r *proto.Record) bool { return r.Status.Terminal() })
	require.Equal(t, proto.StatusFailed, rec.Status)
	require.Equal(t, proto.ErrMsgNoWorkflow, rec.Error)
	require.Equal(t, uint64(0), b.streamMsgs(t, proto.JobsStream), "nothing reaches the workers")

	b.submit(t, proto.SourceBatch, `{"id":"bad-2","lane":"fast","input":{"workflow":{}}}`, "bad-2")
	rec = b.waitRecord(t, "bad-2", func(r *proto.Record) bool { return r.Status.Terminal() })
	require.Contains(t, rec.Error, `field lane: "fast" is not a lane`)
}

func TestMessageWithoutIDGoesToRejects(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	rejects := make(chan *nats.Msg, 2)
	sub, err := b.nats.Conn.ChanSubscribe(proto.RejectSubject(proto.DefaultTenant), rejects)
	require.NoError(t, err)
	defer sub.Unsubscribe()
	b.submit(t, proto.SourceBatch, `{"input": not json`, "")
	select {
	case m := <-rejects:
		require.Equal(t, `{"input": not json`, string(m.Data))
		require.Contains(t, m.Header.Get(proto.RejectReasonHeader), "invalid JSON at byte")
	case <-time.After(10 * time.Second):
		t.Fatal("no reject")
	}
}

func TestReplicasAdmitEachJobOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, 3)
	const n = 60
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("r-%d", i)
			b.submit(t, proto.SourceBatch, `{"id":"`+id+`","input":{"workflow":{}}}`, id)
			// A producer retrying the same id is de-duplicated.
			b.submit(t, proto.SourceBatch, `{"id":"`+id+`","input":{"workflow":{}}}`, id)
		}()
	}
	wg.Wait()
	require.Eventually(t, func() bool {
		return b.streamMsgs(t, proto.JobsStream) == n && b.streamMsgs(t, proto.SubmitStream) == 0
	}, 20*time.Second, 20*time.Millisecond)
	for i := range n {
		rec, err := b.db.Get(context.Background(), fmt.Sprintf("r-%d", i))
		require.NoError(t, err)
		require.Equal(t, proto.StatusInQueue, rec.Status)
	}
}

func TestStopIsIdempotentAndSafeWithoutStart(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	q, err := queue.New(n.Conn)
	require.NoError(t, err)
	rc, prefix := testenv.Redis(t)
	d, err := dispatch.New(dispatch.Config{}, q, lifecycle.New(rdb.New(rc, rdb.Options{Prefix: prefix}), q, nil), dispatch.Admission{}, nil)
	require.NoError(t, err)
	d.Stop()
	require.NoError(t, q.Ensure(testenv.Context(t, 10*time.Second), queue.Config{}))
	for range 3 {
		require.NoError(t, d.Start(context.Background()))
		d.Stop()
		d.Stop()
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     dispatch.Config
		wantErr string
	}{
		{name: "bad default pool", cfg: dispatch.Config{DefaultPool: "a.b"}, wantErr: "default pool"},
		{name: "negative fetch wait", cfg: dispatch.Config{FetchWait: -1}, wantErr: "fetch wait"},
		{name: "negative sweep interval", cfg: dispatch.Config{Sweeper: lifecycle.SweeperConfig{Every: -1}}, wantErr: "sweeper settings must not be negative"},
		{name: "ok", cfg: dispatch.Config{}},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		if tt.wantErr == "" {
			require.NoError(t, err, tt.name)
			continue
		}
		require.ErrorContains(t, err, tt.wantErr, tt.name)
		_, err = dispatch.New(tt.cfg, nil, nil, dispatch.Admission{}, nil)
		require.ErrorContains(t, err, tt.wantErr, tt.name)
	}
}
