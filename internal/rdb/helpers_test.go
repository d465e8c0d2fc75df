package rdb_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// backend is one implementation of the Redis protocol the DB must work
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
		client := redis.NewClient(&redis.Options{Addr: m.Addr()})
		t.Cleanup(func() { client.Close() })
		return client, "mini:"
	}},
}

// bundle is the system under test and its collaborators.
type bundle struct {
	db     *rdb.DB
	rdb    redis.UniversalClient
	ctx    context.Context
	prefix string
}

func setup(t testing.TB, b backend, opts rdb.Options) *bundle {
	t.Helper()
	client, prefix := b.open(t)
	opts.Prefix = prefix
	return &bundle{db: rdb.New(client, opts), rdb: client, ctx: testenv.Context(t, 30*time.Second), prefix: prefix}
}

// conformance runs f against every backend, in parallel.
func conformance(t *testing.T, opts rdb.Options, f func(t *testing.T, b *bundle)) {
	t.Parallel()
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			t.Parallel()
			f(t, setup(t, be, opts))
		})
	}
}

func (b *bundle) key(id string) string { return b.prefix + proto.JobKey(id) }

// hash is the raw hash of a job, internal fields included.
func (b *bundle) hash(t *testing.T, id string) map[string]string {
	t.Helper()
	h, err := b.rdb.HGetAll(b.ctx, b.key(id)).Result()
	require.NoError(t, err)
	return h
}

func (b *bundle) pttl(t *testing.T, id string) time.Duration {
	t.Helper()
	d, err := b.rdb.PTTL(b.ctx, b.key(id)).Result()
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

// score is the member's score in one of the sorted sets, false when it
// is not in it.
func (b *bundle) score(t *testing.T, set, id string) (float64, bool) {
	t.Helper()
	s, err := b.rdb.ZScore(b.ctx, b.prefix+set, id).Result()
	if err == redis.Nil {
		return 0, false
	}
	require.NoError(t, err)
	return s, true
}

// now is Redis's clock.
func (b *bundle) now(t *testing.T) time.Time {
	t.Helper()
	now, err := b.db.Time(b.ctx)
	require.NoError(t, err)
	return now
}

// claim claims a job for a worker with a long lease.
func (b *bundle) claim(t *testing.T, id, worker string) *rdb.Claimed {
	t.Helper()
	c, err := b.db.Claim(b.ctx, rdb.ClaimParams{ID: id, WorkerID: worker, Reply: "reply." + worker, LeaseTTL: time.Minute})
	require.NoError(t, err)
	return c
}

// bring creates job id and moves it to the given state; "" leaves it
// missing. It returns the record (nil when missing).
func (b *bundle) bring(t *testing.T, id string, to proto.Status) *proto.Record {
	t.Helper()
	if to == "" {
		return nil
	}
	db, ctx := b.db, b.ctx
	rec, created, err := db.Create(ctx, rdb.CreateParams{ID: id, Pool: "default", Lane: proto.LaneBatch, Source: "batch"}, time.Time{}, false)
	require.NoError(t, err)
	require.True(t, created)
	switch to {
	case proto.StatusInQueue:
	case proto.StatusCancelled:
		rec, _, err = db.Cancel(ctx, id)
	default:
		c := b.claim(t, id, "w1")
		rec = c.Record
		if to.Terminal() {
			var out json.RawMessage
			var msg string
			if to == proto.StatusCompleted {
				out = json.RawMessage(`{"images":[]}`)
			} else {
				msg = "boom"
			}
			rec, err = db.Finish(ctx, id, c.Lease.Attempt, to, out, msg, false)
		}
	}
	require.NoError(t, err)
	require.Equal(t, to, rec.Status)
	return rec
}

// waitLapsed waits until the job's lease lapsed by Redis's clock.
func (b *bundle) waitLapsed(t *testing.T, id string) {
	t.Helper()
	require.Eventually(t, func() bool {
		ids, err := b.db.LapsedLeases(b.ctx, 1000)
		if err != nil {
			return false
		}
		for _, l := range ids {
			if l == id {
				return true
			}
		}
		return false
	}, 10*time.Second, 5*time.Millisecond, "the lease of %s never lapsed", id)
}
