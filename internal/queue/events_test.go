package queue_test

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// collector gathers the events a subscription delivers.
type collector struct {
	mu  sync.Mutex
	evs []proto.Event
}

func (c *collector) add(ev *proto.Event) {
	c.mu.Lock()
	c.evs = append(c.evs, *ev)
	c.mu.Unlock()
}

func (c *collector) types() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, ev := range c.evs {
		out = append(out, string(ev.Type)+":"+string(ev.Status))
	}
	return out
}

// TestEventClassesReachTheirReaders: each class of event goes to its own
// subject, so SubscribeFinal sees terminal statuses alone,
// SubscribeStatuses every transition but no progress, and SubscribeEvents
// and the event log every event of the job but its previews.
func TestEventClassesReachTheirReaders(t *testing.T) {
	t.Parallel()
	q, _ := setup(t)
	ctx := testenv.Context(t, 20*time.Second)
	var all, final, statuses collector
	for _, sub := range []func() (func(), error){
		func() (func(), error) { return q.SubscribeEvents("j", all.add) },
		func() (func(), error) { return q.SubscribeFinal("j", final.add) },
		func() (func(), error) { return q.SubscribeStatuses(statuses.add) },
	} {
		stop, err := sub()
		require.NoError(t, err)
		t.Cleanup(stop)
	}
	require.NoError(t, q.Flush(ctx))

	for _, ev := range []*proto.Event{
		{Type: proto.EventStatus, Status: proto.StatusInQueue},
		{Type: proto.EventStatus, Status: proto.StatusInProgress},
		{Type: proto.EventProgress, Progress: &proto.Progress{Value: 1, Max: 2}},
		{Type: proto.EventPreview, Preview: &proto.Preview{Mime: "image/jpeg", Data: "AAAA"}},
		{Type: proto.EventStream, Output: []byte(`{"chunk":1}`)},
		{Type: proto.EventStatus, Status: proto.StatusCompleted},
	} {
		ev.JobID = "j"
		require.NoError(t, q.PublishEvent(ctx, ev))
	}
	// Another job's final event reaches the watcher of all statuses only.
	require.NoError(t, q.PublishEvent(ctx, &proto.Event{JobID: "other", Type: proto.EventStatus, Status: proto.StatusFailed}))

	wantAll := []string{"status:IN_QUEUE", "status:IN_PROGRESS", "progress:", "stream:", "status:COMPLETED"}
	wantStatuses := []string{"status:IN_QUEUE", "status:IN_PROGRESS", "status:COMPLETED", "status:FAILED"}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, wantAll, all.types(), "SubscribeEvents")
		// Two subscriptions (status and final) deliver on goroutines of
		// their own: the order between them is not kept.
		assert.ElementsMatch(c, wantStatuses, statuses.types(), "SubscribeStatuses")
		assert.Equal(c, []string{"status:COMPLETED"}, final.types(), "SubscribeFinal")
	}, 10*time.Second, 10*time.Millisecond)

	evs, last, err := q.ReadEvents(ctx, "j", 0, 100)
	require.NoError(t, err)
	var logged []string
	for _, ev := range evs {
		logged = append(logged, string(ev.Type)+":"+string(ev.Status))
		require.Equal(t, proto.Version, ev.V)
		require.False(t, ev.Time.IsZero())
	}
	require.Equal(t, wantAll, logged, "the event log holds the job's events in order, without its preview")
	lastEv, err := q.LastEvent(ctx, "j")
	require.NoError(t, err)
	require.Equal(t, last, lastEv.Seq)
	require.Equal(t, proto.StatusCompleted, lastEv.Status)
}
