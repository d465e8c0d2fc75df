package lifecycle_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/proto"
)

// fair attaches a releaser to the bundle's core; the tests run its
// rounds themselves (RunOnce), so nothing moves between their steps.
func (b *bundle) fair(t *testing.T, cfg lifecycle.FairShare) *lifecycle.Releaser {
	t.Helper()
	r, err := b.core.NewReleaser(cfg)
	require.NoError(t, err)
	return r
}

// submitAs queues n batch jobs of tenant, ids "<tenant>-<i>".
func (b *bundle) submitAs(t *testing.T, tenant string, n int) {
	t.Helper()
	for i := range n {
		j := job(fmt.Sprintf("%s-%d", tenant, i))
		j.Tenant = tenant
		require.Equal(t, lifecycle.Queued, b.submit(t, j))
	}
}

// held counts the jobs of tenant in the default pool's batch hold.
func (b *bundle) held(t *testing.T, tenant string) uint64 {
	t.Helper()
	holds, err := b.q.Holds(b.ctx)
	require.NoError(t, err)
	return holds[queue.LaneKey{Pool: proto.DefaultPool, Lane: proto.LaneBatch}][tenant]
}

// take takes the next job off the lanes and acks it, as a worker that
// ran it would, and says whose it was.
func (b *bundle) take(t *testing.T) string {
	t.Helper()
	msg, j := b.next(t)
	require.NoError(t, msg.Ack(b.ctx))
	return j.Tenant
}

func TestNewTenantIsServedBeforeAnotherTenantsBacklog(t *testing.T) {
	b := setup(t)
	r := b.fair(t, lifecycle.FairShare{Ahead: 2})
	b.submitAs(t, "big", 30)
	// Two go straight onto the lane (its room); the rest wait their turn.
	assert.Equal(t, uint64(28), b.held(t, "big"))
	b.submitAs(t, "small", 1)
	assert.Equal(t, uint64(1), b.held(t, "small"), "a lane that holds jobs holds every new one")

	// The fleet view counts held jobs as queued.
	o, err := b.q.ReadOverview(b.ctx, nil)
	require.NoError(t, err)
	for _, l := range o.Lanes {
		if l.Lane == proto.LaneBatch {
			assert.Equal(t, uint64(31), l.Queued)
			assert.Equal(t, uint64(29), l.Held)
			assert.False(t, l.Oldest.IsZero())
		}
	}

	// The workers take the two ahead; the next two released are one of
	// each tenant's, whatever big's backlog.
	var order []string
	for range 2 {
		order = append(order, b.take(t))
	}
	n, err := r.RunOnce(b.ctx)
	require.NoError(t, err)
	require.Equal(t, 2, n, "the lane had room for two")
	for range 2 {
		order = append(order, b.take(t))
	}
	assert.Equal(t, []string{"big", "big"}, order[:2])
	assert.ElementsMatch(t, []string{"big", "small"}, order[2:], "small's job waits behind the lane's two, not behind big's 28")
	assert.Equal(t, uint64(27), b.held(t, "big"))
	b.noDelivery(t)
}

func TestWeightsShareALane(t *testing.T) {
	b := setup(t)
	r := b.fair(t, lifecycle.FairShare{Ahead: 4, Weights: map[string]int{"a": 3}})
	b.submitAs(t, "a", 30)
	b.submitAs(t, "b", 30)
	for range 4 {
		require.Equal(t, "a", b.take(t)) // the four that went straight on
	}
	count := map[string]int{}
	for range 5 {
		n, err := r.RunOnce(b.ctx)
		require.NoError(t, err)
		require.Equal(t, 4, n)
		for range 4 {
			count[b.take(t)]++
		}
	}
	// Weight 3 against 1: three of every four released jobs are a's.
	assert.Equal(t, map[string]int{"a": 15, "b": 5}, count)
}

func TestConcurrencyCapBoundsATenantAcrossTheFleet(t *testing.T) {
	b := setup(t)
	r := b.fair(t, lifecycle.FairShare{Ahead: 10, Caps: map[string]int{"capped": 2}})
	b.submitAs(t, "capped", 5)
	assert.Equal(t, uint64(5), b.held(t, "capped"), "a capped tenant's jobs always wait their turn")
	n, err := r.RunOnce(b.ctx)
	require.NoError(t, err)
	assert.Equal(t, 2, n, "two may be on the lane or running")
	n, err = r.RunOnce(b.ctx)
	require.NoError(t, err)
	assert.Equal(t, 0, n, "none more while both are queued or running")
	active, err := b.db.Active(b.ctx, "capped")
	require.NoError(t, err)
	assert.Equal(t, int64(2), active)

	// One ends: its place goes to the next.
	cl := b.claim(t, "w1", time.Minute)
	require.NoError(t, b.core.Finish(b.ctx, cl, lifecycle.Result{Status: proto.StatusCompleted, Output: json.RawMessage(`{"images":[]}`)}))
	n, err = r.RunOnce(b.ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Equal(t, uint64(2), b.held(t, "capped"))

	// An uncapped tenant is not held up by the capped one's wait.
	b.submitAs(t, "free", 1)
	n, err = r.RunOnce(b.ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Equal(t, uint64(0), b.held(t, "free"))
}

func TestHeldJobThatEndedIsDroppedNotReleased(t *testing.T) {
	b := setup(t)
	r := b.fair(t, lifecycle.FairShare{Ahead: 1})
	b.submitAs(t, "t", 2) // t-0 on the lane, t-1 held
	_, err := b.core.Cancel(b.ctx, "t-1")
	require.NoError(t, err)
	require.Equal(t, "t", b.take(t))
	n, err := r.RunOnce(b.ctx)
	require.NoError(t, err)
	assert.Equal(t, 0, n)
	assert.Equal(t, uint64(0), b.held(t, "t"), "the cancelled job left the hold")
	b.noDelivery(t)
}

func TestTenantNumbersAreParsedStrictly(t *testing.T) {
	m, err := lifecycle.ParseTenantNumbers(" acme=3, beta=1 ,")
	require.NoError(t, err)
	assert.Equal(t, map[string]int{"acme": 3, "beta": 1}, m)
	for in, want := range map[string]string{
		"acme":         `pair 1 "acme": want tenant=n`,
		"acme=0":       `pair 1 "acme=0": want tenant=n`,
		"acme=x":       `pair 1 "acme=x": want tenant=n`,
		"a=1,a=2":      `pair 2 "a=2": tenant a is named twice`,
		"a b=1":        `pair 1 "a b=1": tenant:`,
		"ok=1,bad=-2":  `pair 2 "bad=-2"`,
		"=3":           `pair 1 "=3": tenant:`,
		"acme=1.5,b=1": `pair 1 "acme=1.5"`,
		"x=1,,y=z,w=1": `pair 3 "y=z"`,
	} {
		_, err := lifecycle.ParseTenantNumbers(in)
		require.Error(t, err, in)
		assert.Contains(t, err.Error(), want, in)
	}
}
