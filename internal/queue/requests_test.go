package queue_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// A kept request holds its job's secrets: it lives its own TTL, a later
// keep replaces it, and a drop removes it with no trace of its bytes.

// gone waits until the request of id is no longer kept.
func gone(t *testing.T, q *queue.Client, id string, within time.Duration) {
	t.Helper()
	ctx := testenv.Context(t, within+5*time.Second)
	deadline := time.Now().Add(within)
	for {
		_, err := q.KeptRequest(ctx, id)
		if errors.Is(err, queue.ErrNotKept) {
			return
		}
		require.NoError(t, err)
		require.True(t, time.Now().Before(deadline), "the request of %s is still kept after %v", id, within)
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond): // JetStream expires in whole seconds
		}
	}
}

func TestKeptRequestLivesItsTTL(t *testing.T) {
	t.Parallel()
	q, _ := setup(t)
	ctx := testenv.Context(t, 30*time.Second)
	require.NoError(t, q.KeepRequest(ctx, "short", []byte(`{"id":"short"}`), time.Millisecond)) // a second at least
	require.NoError(t, q.KeepRequest(ctx, "long", []byte(`{"id":"long"}`), time.Hour))
	got, err := q.KeptRequest(ctx, "short")
	require.NoError(t, err)
	require.Equal(t, `{"id":"short"}`, string(got))
	gone(t, q, "short", 10*time.Second)
	got, err = q.KeptRequest(ctx, "long")
	require.NoError(t, err, "a copy whose job lives on stays")
	require.Equal(t, `{"id":"long"}`, string(got))
}

func TestKeepRequestReplacesTheCopy(t *testing.T) {
	t.Parallel()
	q, _ := setup(t)
	ctx := testenv.Context(t, 30*time.Second)
	require.NoError(t, q.KeepRequest(ctx, "j", []byte(`{"id":"j","n":1}`), time.Second))
	require.NoError(t, q.KeepRequest(ctx, "j", []byte(`{"id":"j","n":2}`), time.Hour)) // a /retry's
	// The retry's TTL counts, not the first keep's: once a copy kept for
	// a second after the first is gone, this one is still there.
	require.NoError(t, q.KeepRequest(ctx, "probe", []byte(`{}`), time.Second))
	gone(t, q, "probe", 10*time.Second)
	got, err := q.KeptRequest(ctx, "j")
	require.NoError(t, err)
	require.Equal(t, `{"id":"j","n":2}`, string(got))
}

func TestDropRequestsLeavesNoTrace(t *testing.T) {
	t.Parallel()
	q, n := setup(t)
	ctx := testenv.Context(t, 30*time.Second)
	for _, id := range []string{"a", "b", "c"} {
		require.NoError(t, q.KeepRequest(ctx, id, []byte(`{"id":"`+id+`","secret":"s3cr3t-`+id+`"}`), time.Hour))
	}
	dropped, err := q.DropRequests(ctx, []string{"a", "b", "never-kept"})
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"a", "b", "never-kept"}, dropped)
	for _, id := range []string{"a", "b", "never-kept"} {
		_, err := q.KeptRequest(ctx, id)
		require.ErrorIs(t, err, queue.ErrNotKept, id)
	}
	_, err = q.KeptRequest(ctx, "c")
	require.NoError(t, err)

	// Nothing of the dropped copies is left in the bucket's stream.
	s, err := n.JS.Stream(ctx, "KV_"+proto.RequestBucket)
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		require.NoError(t, err)
		require.False(t, bytes.Contains(m.Data, []byte("s3cr3t-a")) || bytes.Contains(m.Data, []byte("s3cr3t-b")), "message %d: %s", seq, m.Data)
	}
}

// TestEnsureMigratesAnOldRequestBucket: a bucket made by a version
// without per-key TTLs gets them at Ensure; its copies stay readable.
func TestEnsureMigratesAnOldRequestBucket(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	ctx := testenv.Context(t, 30*time.Second)
	old, err := n.JS.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: proto.RequestBucket, Description: "job requests accepted by the runpod-adapter, kept for /retry",
		TTL: queue.RequestKeep, History: 1, Storage: jetstream.FileStorage, Replicas: 1,
	})
	require.NoError(t, err)
	_, err = old.Put(ctx, "before", []byte(`{"id":"before"}`))
	require.NoError(t, err)

	q, err := queue.New(n.Conn)
	require.NoError(t, err)
	require.NoError(t, q.Ensure(ctx, queue.Config{}))
	require.NoError(t, q.Ensure(ctx, queue.Config{}), "and again, as every process does")
	kv, err := n.JS.KeyValue(ctx, proto.RequestBucket)
	require.NoError(t, err)
	st, err := kv.Status(ctx)
	require.NoError(t, err)
	require.Positive(t, st.LimitMarkerTTL(), "per-key TTLs on")
	require.Equal(t, queue.RequestKeep, st.TTL(), "still bounded by the longest keep")

	got, err := q.KeptRequest(ctx, "before")
	require.NoError(t, err)
	require.Equal(t, `{"id":"before"}`, string(got))
	require.NoError(t, q.KeepRequest(ctx, "after", []byte(`{"id":"after"}`), time.Second))
	gone(t, q, "after", 10*time.Second)
}

func TestDropRequestsSaysWhatFailed(t *testing.T) {
	t.Parallel()
	q, _ := setup(t)
	ctx, cancel := context.WithCancel(testenv.Context(t, 10*time.Second))
	require.NoError(t, q.KeepRequest(ctx, "a", []byte(`{}`), time.Hour))
	cancel()
	dropped, err := q.DropRequests(ctx, []string{"a"})
	require.Error(t, err)
	require.Contains(t, err.Error(), "remove kept request of a")
	require.Empty(t, dropped)
}
