package lifecycle_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testenv.LeakOptions()...)
}

// bundle is a core on a test's own NATS and Redis, and what the tests
// look at beside it.
type bundle struct {
	core   *lifecycle.Core
	q      *queue.Client
	db     *rdb.DB
	nats   *testenv.NATS
	ctx    context.Context
	intake *queue.Consumer
	lanes  *queue.Lanes

	mu     sync.Mutex
	events []*proto.Event // every event, in order
}

func setup(t *testing.T) *bundle {
	t.Helper()
	n := testenv.StartNATS(t)
	client, prefix := testenv.Redis(t)
	q, err := queue.New(n.Conn)
	require.NoError(t, err)
	ctx := testenv.Context(t, time.Minute)
	require.NoError(t, q.Ensure(ctx, queue.Config{}))
	db := rdb.New(client, rdb.Options{Prefix: prefix})
	b := &bundle{core: lifecycle.New(db, q, zaptest.NewLogger(t)), q: q, db: db, nats: n, ctx: ctx}
	b.intake, err = q.IntakeConsumer(ctx, queue.ConsumerConfig{})
	require.NoError(t, err)
	b.lanes, err = q.OpenLanes(ctx, proto.DefaultPool, queue.LanesConfig{Consumer: queue.ConsumerConfig{AckWait: 30 * time.Second}})
	require.NoError(t, err)
	sub, err := n.Conn.Subscribe("cf.events.>", func(m *nats.Msg) {
		ev, err := proto.DecodeEvent(m.Data)
		if err == nil {
			b.mu.Lock()
			b.events = append(b.events, ev)
			b.mu.Unlock()
		}
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	require.NoError(t, n.Conn.Flush())
	return b
}

// job is a valid batch job of the default pool.
func job(id string) *proto.Job {
	return &proto.Job{ID: id, Input: json.RawMessage(`{"workflow":{"9":{"class_type":"SaveImage","inputs":{}}}}`)}
}

// submit publishes a job on the intake and admits it, as a producer and a
// dispatcher would.
func (b *bundle) submit(t *testing.T, j *proto.Job) lifecycle.Admitted {
	t.Helper()
	require.NoError(t, b.core.Submit(b.ctx, proto.SourceBatch, j, false))
	return b.admitNext(t)
}

// admitNext admits the next intake message.
func (b *bundle) admitNext(t *testing.T) lifecycle.Admitted {
	t.Helper()
	msg, err := b.intake.Next(b.ctx, 5*time.Second)
	require.NoError(t, err)
	out, _, err := b.core.Admit(b.ctx, msg, lifecycle.AdmitOptions{DefaultPool: proto.DefaultPool})
	require.NoError(t, err)
	return out
}

// next takes the next delivered job.
func (b *bundle) next(t *testing.T) (*queue.Message, *proto.Job) {
	t.Helper()
	msg, err := b.lanes.Next(b.ctx, 5*time.Second)
	require.NoError(t, err)
	j, err := proto.DecodeJob(msg.Data())
	require.NoError(t, err)
	return msg, j
}

// noDelivery checks that no job is delivered within a short wait.
func (b *bundle) noDelivery(t *testing.T) {
	t.Helper()
	_, err := b.lanes.Next(b.ctx, 300*time.Millisecond)
	require.ErrorIs(t, err, queue.ErrNoMessage)
}

// claim claims the next delivered job for worker.
func (b *bundle) claim(t *testing.T, worker string, lease time.Duration) *lifecycle.Claim {
	t.Helper()
	msg, j := b.next(t)
	cl, err := b.core.Claim(b.ctx, msg, j, lifecycle.Holder{WorkerID: worker, LeaseTTL: lease, MaxAttempts: 3})
	require.NoError(t, err)
	return cl
}

func (b *bundle) record(t *testing.T, id string) *proto.Record {
	t.Helper()
	rec, err := b.db.Get(b.ctx, id)
	require.NoError(t, err)
	return rec
}

// statuses are the statuses the job's status events said, in order.
func (b *bundle) statuses(id string) []proto.Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []proto.Status
	for _, ev := range b.events {
		if ev.JobID == id && ev.Type == proto.EventStatus {
			out = append(out, ev.Status)
		}
	}
	return out
}

// waitStatuses waits until the job's status events are want.
func (b *bundle) waitStatuses(t *testing.T, id string, want ...proto.Status) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, want, b.statuses(id))
	}, 5*time.Second, 5*time.Millisecond)
}

// jobsWaiting counts the messages of CF_JOBS not yet acked.
func (b *bundle) jobsWaiting(t *testing.T) uint64 {
	t.Helper()
	s, err := b.nats.JS.Stream(b.ctx, proto.JobsStream)
	require.NoError(t, err)
	info, err := s.Info(b.ctx)
	require.NoError(t, err)
	return info.State.Msgs
}
