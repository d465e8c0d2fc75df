package batch_test

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/batch"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// TestRawJSONProducer publishes on cf.submit.batch with nothing but the
// nats.go client and hand-written JSON, as a producer in another language
// would from the contract's documentation, and checks what each message
// gets: a record and events for those with a usable id (FAILED with the
// reason when they are malformed), the rejects subject for those without.
func TestRawJSONProducer(t *testing.T) {
	t.Parallel()
	f := setupFleet(t, 0)
	ctx := testenv.Context(t, time.Minute)
	wf := string(exampleWorkflow(t))

	var mu sync.Mutex
	events := map[string][]proto.Event{}
	subjects := map[string]map[proto.Status]string{} // job -> status -> the subject it came on
	// Every event of every job: cf.events.<id>.<class>.<tenant>.
	evSub, err := f.nc.Subscribe("cf.events.*.*.*", func(m *nats.Msg) {
		var ev proto.Event
		if json.Unmarshal(m.Data, &ev) == nil && ev.Type == proto.EventStatus {
			mu.Lock()
			events[ev.JobID] = append(events[ev.JobID], ev)
			if subjects[ev.JobID] == nil {
				subjects[ev.JobID] = map[proto.Status]string{}
			}
			subjects[ev.JobID][ev.Status] = m.Subject
			mu.Unlock()
		}
	})
	require.NoError(t, err)
	defer evSub.Unsubscribe()
	rejects := make(chan *nats.Msg, 16)
	rjSub, err := f.nc.ChanSubscribe("cf.rejects.default", rejects)
	require.NoError(t, err)
	defer rjSub.Unsubscribe()
	require.NoError(t, f.nc.Flush())

	schema := compileSchema(t)
	msgs := []struct {
		id, body   string
		wantStatus proto.Status // "" for a reject
		wantErr    string       // the record's error, or the reject reason
	}{
		{id: "raw-1", body: `{"v":1,"id":"raw-1","batch_id":"rawb","index":0,"input":{"workflow":` + wf + `}}`, wantStatus: proto.StatusCompleted},
		{id: "raw-2", body: `{"id":"raw-2","batch_id":"rawb","index":1,"lane":"interactive","output":{"s3_prefix":"runs/raw"},"input":{"workflow":` + wf + `}}`, wantStatus: proto.StatusCompleted},
		{id: "raw-3", body: `{"id":"raw-3","batch_id":"rawb","index":2,"input":{"images":[]}}`, wantStatus: proto.StatusFailed, wantErr: proto.ErrMsgNoWorkflow},
		{id: "raw-4", body: `{"id":"raw-4","lane":"fast","input":{"workflow":{}}}`, wantStatus: proto.StatusFailed, wantErr: `field lane: "fast" is not a lane`},
		{id: "raw-5", body: `{"id":"raw-5","batch_id":"a/b","input":{"workflow":{}}}`, wantStatus: proto.StatusFailed, wantErr: "field batch_id"},
		{id: "raw-6", body: `{"id":"raw-6","index":-3,"input":{"workflow":{}}}`, wantStatus: proto.StatusFailed, wantErr: "field index: -3 is negative"},
		{id: "raw-7", body: `{"id":"raw-7","batch_id":"rawb","index":"x","input":{"workflow":` + wf + `}}`, wantStatus: proto.StatusFailed, wantErr: "field index: got a string, want a whole number"},
		{id: "raw-8", body: `{"id":"raw-8","policy":"fast","input":{"workflow":` + wf + `}}`, wantStatus: proto.StatusFailed, wantErr: "field policy: got a string, want an object"},
		{id: "raw-10", body: `{"id":"raw-10","webhook":"file:///etc/passwd","input":{"workflow":` + wf + `}}`, wantStatus: proto.StatusFailed, wantErr: `field webhook: has the scheme "file"`},
		{id: "raw-11", body: `{"id":"raw-11","policy":{"executionTimeout":9223372036854775807},"input":{"workflow":` + wf + `}}`, wantStatus: proto.StatusFailed, wantErr: "field policy.executionTimeout: 9223372036854775807 ms is more than the limit"},
		{id: "no-id", body: `{"input":{"workflow":{}}}`, wantErr: "field id: id is empty"},
		{id: "bad-id", body: `{"id":"a.b","input":{"workflow":{}}}`, wantErr: `field id: id "a.b" has the character '.'`},
		{id: "not-json", body: `{"id":"raw-9","input":`, wantErr: "invalid JSON"},
	}
	for _, m := range msgs {
		inst, jerr := jsonschema.UnmarshalJSON(strings.NewReader(m.body))
		schemaOK := jerr == nil && schema.Validate(inst) == nil
		require.Equal(t, m.wantStatus == proto.StatusCompleted, schemaOK, "%s: the schema accepts exactly the messages the fleet runs", m.id)

		msg := &nats.Msg{Subject: "cf.submit.batch", Data: []byte(m.body), Header: nats.Header{}}
		msg.Header.Set("Nats-Msg-Id", m.id)
		ack, err := f.js.PublishMsg(ctx, msg)
		require.NoError(t, err, m.id)
		require.False(t, ack.Duplicate)
	}
	// The same id again: JetStream acknowledges it as a duplicate and keeps
	// one message.
	again := &nats.Msg{Subject: "cf.submit.batch", Data: []byte(msgs[0].body), Header: nats.Header{}}
	again.Header.Set("Nats-Msg-Id", "raw-1")
	ack, err := f.js.PublishMsg(ctx, again)
	require.NoError(t, err)
	require.True(t, ack.Duplicate, "the PubAck says duplicate")
	stream, err := f.js.Stream(ctx, proto.SubmitStream)
	require.NoError(t, err)
	info, err := stream.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, len(msgs), info.State.LastSeq, "one stored message per id")

	// Statuses and events.
	for _, m := range msgs {
		if m.wantStatus == "" {
			continue
		}
		var rec *proto.Record
		require.Eventually(t, func() bool {
			rec, err = f.b.DB.Get(ctx, m.id)
			return err == nil && rec.Status.Terminal()
		}, 30*time.Second, 20*time.Millisecond, "%s never finished", m.id)
		require.Equal(t, m.wantStatus, rec.Status, m.id)
		require.Contains(t, rec.Error, m.wantErr, m.id)
		require.Equal(t, proto.SourceBatch, rec.Source, m.id)
		require.Eventually(t, func() bool {
			mu.Lock()
			defer mu.Unlock()
			evs := events[m.id]
			return len(evs) > 0 && evs[len(evs)-1].Status == m.wantStatus
		}, 10*time.Second, 10*time.Millisecond, "%s: no %s event", m.id, m.wantStatus)
		mu.Lock()
		evs := events[m.id]
		subj := subjects[m.id]
		mu.Unlock()
		last := evs[len(evs)-1]
		require.Equal(t, rec.Error, last.Error, "%s: the event carries the record's error", m.id)
		require.Equal(t, "cf.events."+m.id+".final.default", subj[m.wantStatus], "%s: a terminal status comes on the final subject", m.id)
		if m.wantStatus == proto.StatusCompleted {
			seen := map[proto.Status]bool{}
			for _, e := range evs {
				seen[e.Status] = true
			}
			require.True(t, seen[proto.StatusInQueue] && seen[proto.StatusInProgress], "%s: events %v", m.id, evs)
			require.Equal(t, "cf.events."+m.id+".status.default", subj[proto.StatusInProgress], "%s: a transition comes on the status subject", m.id)
		}
	}
	r1, err := f.b.DB.Get(ctx, "raw-1")
	require.NoError(t, err)
	require.Equal(t, proto.LaneBatch, r1.Lane, "cf.submit.batch defaults to the batch lane")
	require.Equal(t, "rawb", r1.BatchID)
	r2, err := f.b.DB.Get(ctx, "raw-2")
	require.NoError(t, err)
	require.Equal(t, proto.LaneInteractive, r2.Lane, "a lane given is kept")

	// The result, read as the docs say: the record's output names blob keys
	// in the object store cf-blobs.
	var out proto.Output
	require.NoError(t, json.Unmarshal(r1.Output, &out))
	require.Len(t, out.Images, 1)
	obj, err := f.js.ObjectStore(ctx, proto.BlobBucket)
	require.NoError(t, err)
	png, err := obj.GetBytes(ctx, out.Images[0].Blob)
	require.NoError(t, err)
	require.True(t, bytes.HasPrefix(png, []byte("\x89PNG")))

	// Rejects: every message without a usable id, with the reason.
	got := map[string]string{}
	for range 3 {
		select {
		case m := <-rejects:
			got[string(m.Data)] = m.Header.Get("Cf-Reject-Reason")
		case <-ctx.Done():
			t.Fatalf("rejects: got %d of 3", len(got))
		}
	}
	for _, m := range msgs {
		if m.wantStatus == "" {
			require.Contains(t, got[m.body], m.wantErr, m.id)
		}
	}

	// The CLI finds a batch it did not submit by the records' batch_id.
	var buf bytes.Buffer
	require.NoError(t, f.runner.Status(ctx, "rawb", &buf, false))
	require.Contains(t, buf.String(), "batch rawb: 4 item(s): COMPLETED 2, FAILED 2")
	require.Contains(t, buf.String(), "raw-3")
	require.Contains(t, buf.String(), "raw-7", "a job failed for a malformed field is still in its batch")
	dir := t.TempDir()
	sum, err := f.runner.Watch(ctx, batch.Options{BatchID: "rawb", Out: dir, Output: io.Discard})
	require.NoError(t, err)
	require.Equal(t, batch.Counts{Total: 4, Done: 2, Failed: 2}, sum.Counts)
	require.Zero(t, sum.DownloadErrors)
	require.FileExists(t, dir+"/raw-1/raw-1_"+out.Images[0].Filename)
}

func compileSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(proto.JobSchema()))
	require.NoError(t, err)
	c := jsonschema.NewCompiler()
	require.NoError(t, c.AddResource("schema.json", doc))
	s, err := c.Compile("schema.json")
	require.NoError(t, err)
	return s
}
