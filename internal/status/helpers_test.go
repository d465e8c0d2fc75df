package status_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/status"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// backend is one implementation of the Redis protocol the store must work
// on. Every conformance test runs against each of them.
type backend struct {
	name string
	open func(t testing.TB) (redis.UniversalClient, string)
}

var backends = []backend{
	{"redis", func(t testing.TB) (redis.UniversalClient, string) {
		return testenv.Redis(t)
	}},
	{"miniredis", func(t testing.TB) (redis.UniversalClient, string) {
		m := miniredis.RunT(t)
		rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
		t.Cleanup(func() { rdb.Close() })
		return rdb, "mini:"
	}},
}

// bundle is the system under test and its collaborators.
type bundle struct {
	store  *status.Store
	rdb    redis.UniversalClient
	clock  *fakeClock
	ctx    context.Context
	prefix string
}

func setup(t testing.TB, b backend, opts status.Options) *bundle {
	t.Helper()
	rdb, prefix := b.open(t)
	clock := &fakeClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	opts.Prefix = prefix
	opts.Clock = clock
	return &bundle{
		store:  status.NewStore(rdb, opts),
		rdb:    rdb,
		clock:  clock,
		ctx:    testenv.Context(t, 30*time.Second),
		prefix: prefix,
	}
}

// conformance runs f against every backend, in parallel.
func conformance(t *testing.T, opts status.Options, f func(t *testing.T, b *bundle)) {
	t.Parallel()
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			t.Parallel()
			f(t, setup(t, be, opts))
		})
	}
}

// hash is the raw hash of a job, internal fields included.
func (b *bundle) hash(t *testing.T, id string) map[string]string {
	t.Helper()
	h, err := b.rdb.HGetAll(b.ctx, b.store.Key(id)).Result()
	require.NoError(t, err)
	return h
}

func (b *bundle) pttl(t *testing.T, id string) time.Duration {
	t.Helper()
	d, err := b.rdb.PTTL(b.ctx, b.store.Key(id)).Result()
	require.NoError(t, err)
	return d
}

// requireTTL asserts that the key expires in (want-slack, want].
func (b *bundle) requireTTL(t *testing.T, id string, want time.Duration) {
	t.Helper()
	got := b.pttl(t, id)
	require.LessOrEqual(t, got, want, "PTTL of %s", id)
	require.Greater(t, got, want-10*time.Second, "PTTL of %s", id)
}

// bring creates job id and moves it to the given state; "" leaves it
// missing. It returns the record (nil when missing).
func (b *bundle) bring(t *testing.T, id string, to proto.Status) *proto.Record {
	t.Helper()
	if to == "" {
		return nil
	}
	s, ctx := b.store, b.ctx
	rec, created, err := s.Create(ctx, status.CreateParams{ID: id, Pool: "default", Lane: proto.LaneBatch, Source: "batch"})
	require.NoError(t, err)
	require.True(t, created)
	switch to {
	case proto.StatusInQueue:
	case proto.StatusTimedOut:
		rec, err = s.Expire(ctx, id, "ttl passed")
	case proto.StatusCancelled:
		rec, err = s.Cancel(ctx, id)
	default:
		var attempt int
		attempt, rec, err = s.Claim(ctx, id, "w1")
		require.NoError(t, err)
		if to.Terminal() {
			var out json.RawMessage
			var msg string
			if to == proto.StatusCompleted {
				out = json.RawMessage(`{"images":[]}`)
			} else {
				msg = "boom"
			}
			rec, err = s.Finish(ctx, id, attempt, to, out, msg)
		}
	}
	require.NoError(t, err)
	require.Equal(t, to, rec.Status)
	return rec
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
