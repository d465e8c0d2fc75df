package lifecycle_test

import (
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/proto"
)

// subjects collects the subjects of the messages on a filter.
type subjects struct {
	mu  sync.Mutex
	got []string
}

func (b *bundle) collect(t *testing.T, filter string) *subjects {
	t.Helper()
	s := &subjects{}
	sub, err := b.nats.Conn.Subscribe(filter, func(m *nats.Msg) {
		s.mu.Lock()
		s.got = append(s.got, m.Subject)
		s.mu.Unlock()
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	require.NoError(t, b.nats.Conn.Flush())
	return s
}

func (s *subjects) list() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.got...)
}

// publishAs publishes a raw job message on a tenant's submit subject, as
// that tenant's producer would.
func (b *bundle) publishAs(t *testing.T, tenant string, body any) {
	t.Helper()
	data, err := json.Marshal(body)
	require.NoError(t, err)
	_, err = b.nats.JS.Publish(b.ctx, proto.SubmitSubject(proto.SourceBatch, tenant), data)
	require.NoError(t, err)
}

// TestTenantComesFromTheSubject: a job submitted on
// cf.submit.batch.<tenant> belongs to that tenant, its record says so, and
// every event of its life goes to subjects that end with the tenant, so a
// NATS user allowed cf.events.*.*.<tenant> alone follows it and another
// tenant's user sees nothing of it.
func TestTenantComesFromTheSubject(t *testing.T) {
	t.Parallel()
	b := setup(t)
	acme := b.collect(t, proto.TenantEventSubjects("acme", "*"))
	beta := b.collect(t, proto.TenantEventSubjects("beta", "*"))

	b.publishAs(t, "acme", job("a-1"))
	require.Equal(t, lifecycle.Queued, b.admitNext(t))
	require.Equal(t, "acme", b.record(t, "a-1").Tenant)
	cl := b.claim(t, "w1", time.Minute)
	require.Equal(t, "acme", cl.Job.Tenant, "the admitted message carries the tenant to the worker")
	b.core.Progress(cl, proto.Progress{Node: "3", Value: 1, Max: 2})
	require.NoError(t, b.core.Finish(b.ctx, cl, lifecycle.Result{Status: proto.StatusCompleted, Output: json.RawMessage(`{"images":[]}`)}))

	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, []string{"cf.events.a-1.status.acme", "cf.events.a-1.status.acme", "cf.events.a-1.progress.acme", "cf.events.a-1.final.acme"}, acme.list())
	}, 5*time.Second, 5*time.Millisecond)
	require.Empty(t, beta.list())

	// Without a tenant token the job is the default tenant's.
	b.submit(t, job("d-1"))
	require.Equal(t, proto.DefaultTenant, b.record(t, "d-1").Tenant)
}

// TestTenantCannotBeClaimedInTheMessage: the subject decides the tenant; a
// message that names another one fails, with the field named.
func TestTenantCannotBeClaimedInTheMessage(t *testing.T) {
	t.Parallel()
	b := setup(t)
	j := job("spoof")
	j.Tenant = "acme"
	b.publishAs(t, "beta", j)
	require.Equal(t, lifecycle.Failed, b.admitNext(t))
	rec := b.record(t, "spoof")
	require.Equal(t, proto.StatusFailed, rec.Status)
	require.Equal(t, "beta", rec.Tenant, "the submitter owns the failed record")
	require.Contains(t, rec.Error, `field tenant: the message names tenant "acme" but was submitted as tenant "beta"`)

	// The same tenant named in the message is fine.
	j = job("honest")
	j.Tenant = "beta"
	b.publishAs(t, "beta", j)
	require.Equal(t, lifecycle.Queued, b.admitNext(t))
}

// TestBlobKeysStayInTheTenantsNamespace: an input image given by a blob
// key outside the submitter's "in/<tenant>/" fails admission: it would
// load another tenant's file, or a job's output (the finding: "blob":
// "out/<job>/1/9/x.png" loaded another job's picture).
func TestBlobKeysStayInTheTenantsNamespace(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for i, key := range []string{"out/victim/1/9/ComfyUI_00001_.png", "in/acme/j/x.png", "in/beta/../acme/j/x.png", "in/beta/"} {
		id := "steal-" + string(rune('a'+i))
		b.publishAs(t, "beta", map[string]any{"id": id, "input": map[string]any{
			"workflow": map[string]any{}, "images": []any{map[string]any{"name": "x.png", "blob": key}}}})
		require.Equal(t, lifecycle.Failed, b.admitNext(t), key)
		rec := b.record(t, id)
		require.Contains(t, rec.Error, "images[0].blob: key", key)
		require.Contains(t, rec.Error, "is not in this tenant's inputs (in/beta/…)", key)
	}
	b.publishAs(t, "beta", map[string]any{"id": "own", "input": map[string]any{
		"workflow": map[string]any{}, "images": []any{map[string]any{"name": "x.png", "blob": "in/beta/batch-7/x.png"}}}})
	require.Equal(t, lifecycle.Queued, b.admitNext(t), "its own namespace is fine")
}

// TestAnotherTenantsIDIsTakenAndSaidSo: a submission for an id another
// tenant's job holds changes nothing of that job, and its submitter, who
// cannot see the other job, is told on its own rejects subject.
func TestAnotherTenantsIDIsTakenAndSaidSo(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rejects := make(chan string, 4)
	stop, err := b.q.SubscribeRejects("beta", func(_ []byte, reason string) { rejects <- reason })
	require.NoError(t, err)
	defer stop()
	require.NoError(t, b.nats.Conn.Flush())
	b.publishAs(t, "acme", job("shared-id"))
	require.Equal(t, lifecycle.Queued, b.admitNext(t))
	before := b.record(t, "shared-id")

	b.publishAs(t, "beta", map[string]any{"id": "shared-id", "input": map[string]any{"workflow": map[string]any{}}, "webhook": "https://evil.example/"})
	require.Equal(t, lifecycle.Duplicate, b.admitNext(t))
	require.Equal(t, before, b.record(t, "shared-id"))
	select {
	case reason := <-rejects:
		require.Equal(t, "job id shared-id is taken by a job of another tenant; nothing was queued, choose another id", reason)
	case <-time.After(5 * time.Second):
		t.Fatal("no reject for beta")
	}
}
