package queue_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// TestReplicasFollowTheSetting: on a three-node cluster, a fleet started
// with one replica (the default) and started again with STREAM_REPLICAS=3
// has every stream, the object store and the request bucket on three
// nodes; set back to 1, they shrink again.
//
// The cluster tests run one at a time, not beside the package's other
// tests: three servers electing leaders on two loaded cores are slow
// enough alone.
func TestReplicasFollowTheSetting(t *testing.T) {
	c := testenv.StartNATSCluster(t, 3)
	nc, js := c.Connect(t)
	q, err := queue.New(nc)
	require.NoError(t, err)
	ctx := testenv.Context(t, 60*time.Second)
	streams := []string{proto.SubmitStream, proto.JobsStream, proto.EventsStream, proto.DLQStream, proto.PreviewStream,
		"OBJ_" + proto.BlobBucket, "KV_" + proto.RequestBucket}
	replicas := func() map[string]int {
		out := map[string]int{}
		for _, name := range streams {
			s, err := js.Stream(ctx, name)
			require.NoError(t, err, name)
			out[name] = s.CachedInfo().Config.Replicas
		}
		return out
	}
	all := func(n int) map[string]int {
		out := map[string]int{}
		for _, name := range streams {
			out[name] = n
		}
		return out
	}
	require.NoError(t, q.Ensure(ctx, queue.Config{}))
	require.Equal(t, all(1), replicas())
	require.NoError(t, q.Ensure(ctx, queue.Config{Replicas: 3}))
	require.Equal(t, all(3), replicas())
	require.NoError(t, q.Ensure(ctx, queue.Config{Replicas: 1}))
	require.Equal(t, all(1), replicas())
}

// TestR3StreamSurvivesItsLeader: with three replicas, jobs published
// before the jobs stream's leader stops are all still there, and the
// stream takes more, once another node leads it.
func TestR3StreamSurvivesItsLeader(t *testing.T) {
	c := testenv.StartNATSCluster(t, 3)
	nc, js := c.Connect(t)
	q, err := queue.New(nc)
	require.NoError(t, err)
	ctx := testenv.Context(t, 60*time.Second)
	require.NoError(t, q.Ensure(ctx, queue.Config{Replicas: 3}))
	for i := range 20 {
		require.NoError(t, publishJob(ctx, q, job(fmt.Sprintf("before-%d", i), proto.LaneBatch)))
	}
	s, err := js.Stream(ctx, proto.JobsStream)
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.NotNil(t, info.Cluster)
	leader := c.Index(info.Cluster.Leader)
	require.GreaterOrEqual(t, leader, 0, "the leader %q is a node of the cluster", info.Cluster.Leader)
	c.Stop(leader)

	// Publishing retries until a new leader is elected. A try whose
	// PubAck was lost in the election may still have been stored: the
	// next try is then a duplicate, which is the job accepted.
	require.Eventually(t, func() bool {
		err := publishJob(ctx, q, job("after", proto.LaneBatch))
		return err == nil || errors.Is(err, queue.ErrDuplicate)
	}, 30*time.Second, 50*time.Millisecond)
	require.Eventually(t, func() bool {
		info, err := s.Info(ctx)
		return err == nil && info.Cluster.Leader != "" && info.Cluster.Leader != c.Names()[leader] && info.State.Msgs == 21
	}, 30*time.Second, 50*time.Millisecond, "another node leads the stream, with every job")
	c.Start(leader)
	require.Eventually(t, func() bool {
		info, err := s.Info(ctx)
		if err != nil {
			return false
		}
		current := 0
		for _, r := range info.Cluster.Replicas {
			if r.Current {
				current++
			}
		}
		return current == 2 // both followers caught up, the restarted node among them
	}, 30*time.Second, 50*time.Millisecond, "the restarted node catches up")
}
