package proto_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/proto"
)

func errorsAs(err error, target any) bool { return errors.As(err, target) }

func TestDecodeJob(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		raw     string
		wantErr string
		wantID  string // id still decoded when the error is about another field
	}{
		{name: "minimal", raw: `{"v":1,"id":"job-1","input":{"workflow":{}}}`},
		{name: "version absent", raw: `{"id":"job-1","input":{}}`},
		{name: "not json", raw: `{"id":`, wantErr: "decode job message: invalid JSON at byte"},
		{name: "trailing data", raw: `{"id":"a"} {}`, wantErr: "invalid character"},
		{name: "id wrong type", raw: `{"id":5}`, wantErr: "field id: got JSON number, want string"},
		{name: "no id", raw: `{"input":{}}`, wantErr: "field id: id is empty"},
		{name: "id with dot", raw: `{"id":"a.b"}`, wantErr: `field id: id "a.b" has the character '.' at offset 1`},
		{name: "future version", raw: `{"v":99,"id":"a"}`, wantErr: "version 99 is newer", wantID: "a"},
		{name: "bad lane", raw: `{"id":"a","lane":"fast"}`, wantErr: `field lane: "fast" is not a lane`, wantID: "a"},
		{name: "bad pool", raw: `{"id":"a","pool":"x y"}`, wantErr: "field pool", wantID: "a"},
		{name: "negative ttl", raw: `{"id":"a","policy":{"ttl":-1}}`, wantErr: "field policy.ttl: -1 is negative", wantID: "a"},
		{name: "bad batch id", raw: `{"id":"a","batch_id":"x y"}`, wantErr: "field batch_id", wantID: "a"},
		{name: "negative index", raw: `{"id":"a","index":-1}`, wantErr: "field index: -1 is negative", wantID: "a"},
		{name: "s3 prefix climbing out", raw: `{"id":"a","output":{"s3_prefix":"x/../../y"}}`, wantErr: `field output.s3_prefix: "x/../../y" contains ".."`, wantID: "a"},
		{name: "s3 prefix absolute", raw: `{"id":"a","output":{"s3_prefix":"/y"}}`, wantErr: "starts with '/'", wantID: "a"},
		{name: "s3 prefix too long", raw: `{"id":"a","output":{"s3_prefix":"` + strings.Repeat("p", 513) + `"}}`, wantErr: "513 bytes long", wantID: "a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			j, err := proto.DecodeJob([]byte(tt.raw))
			if tt.wantErr == "" {
				require.NoError(t, err)
				require.Equal(t, "job-1", j.ID)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
			if tt.wantID != "" {
				require.NotNil(t, j)
				require.Equal(t, tt.wantID, j.ID)
			}
		})
	}
}

func TestJobRoundTripKeepsInputBytes(t *testing.T) {
	t.Parallel()
	in := json.RawMessage(`{"workflow":{"3":{"inputs":{"seed":18446744073709551615}}}}`)
	j := proto.Job{V: proto.Version, ID: "x", Input: in, SubmittedAt: time.UnixMilli(1700000000123).UTC(), Policy: proto.Policy{TTL: 1000}}
	data, err := json.Marshal(j)
	require.NoError(t, err)
	got, err := proto.DecodeJob(data)
	require.NoError(t, err)
	require.Equal(t, string(in), string(got.Input))
	require.True(t, j.SubmittedAt.Equal(got.SubmittedAt))
	require.Equal(t, int64(1000), got.Policy.TTL)
	require.NotContains(t, string(data), "s3Config", "absent secrets are not written")
}

func TestS3ConfigStringHidesSecrets(t *testing.T) {
	t.Parallel()
	c := proto.S3Config{AccessID: "AKIA-SECRET-ID", AccessSecret: "very-secret", BucketName: "b", EndpointURL: "https://s3"}
	require.NotContains(t, c.String(), "very-secret")
	require.NotContains(t, c.String(), "AKIA-SECRET-ID")
}

func TestNames(t *testing.T) {
	t.Parallel()
	require.Equal(t, "cf.submit.batch", proto.SubmitSubject(proto.SourceBatch, ""))
	require.Equal(t, "cf.submit.batch.acme", proto.SubmitSubject(proto.SourceBatch, "acme"))
	require.Equal(t, "cf.jobs.default.interactive", proto.JobSubject("default", proto.LaneInteractive))
	require.Equal(t, "cf.events.j1.final.acme", proto.EventSubject("j1", proto.EventClassFinal, "acme"))
	require.Equal(t, "cf.events.j1.final.default", proto.EventSubject("j1", proto.EventClassFinal, ""))
	require.Equal(t, "cf.events.j1.>", proto.JobEventSubjects("j1"))
	require.Equal(t, "cf.events.*.final.acme", proto.TenantEventSubjects("acme", proto.EventClassFinal))
	require.Equal(t, "cf.events.*.final.*", proto.FinalEventSubjects)
	require.Equal(t, []string{"cf.events.*.status.*", "cf.events.*.final.*"}, proto.StatusEventSubjects)
	require.Equal(t, "cf.previews.j1.acme", proto.PreviewSubject("j1", "acme"))
	require.Equal(t, "cf.rejects.default", proto.RejectSubject(""))
	require.Equal(t, "cf:job:j1", proto.JobKey("j1"))
	require.Equal(t, "cf:worker:w1", proto.WorkerKey("w1"))
	require.Equal(t, "cf.dlq.default", proto.DLQSubject("default"))
}

func TestParseSubmitSubject(t *testing.T) {
	t.Parallel()
	tests := []struct {
		subject, source, tenant, wantErr string
	}{
		{subject: "cf.submit.batch", source: "batch", tenant: proto.DefaultTenant},
		{subject: "cf.submit.batch.acme", source: "batch", tenant: "acme"},
		{subject: "cf.submit.api.key-1f0c", source: "api", tenant: "key-1f0c"},
		{subject: "cf.submit.", wantErr: "source: id is empty"},
		{subject: "cf.submit.batch.a.b", wantErr: `tenant: id "a.b" has the character '.'`},
		{subject: "cf.jobs.default.batch", wantErr: "is not a submit subject"},
	}
	for _, tt := range tests {
		t.Run(tt.subject, func(t *testing.T) {
			t.Parallel()
			source, tenant, err := proto.ParseSubmitSubject(tt.subject)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.source, source)
			require.Equal(t, tt.tenant, tenant)
		})
	}
}

func FuzzParseSubmitSubject(f *testing.F) {
	f.Add("cf.submit.batch.acme")
	f.Add("cf.submit.api")
	f.Add("cf.submit..x")
	f.Fuzz(func(t *testing.T, subject string) {
		source, tenant, err := proto.ParseSubmitSubject(subject)
		if err != nil {
			return
		}
		if proto.ValidID(source) != nil || proto.ValidID(tenant) != nil {
			t.Fatalf("%q: accepted source %q, tenant %q", subject, source, tenant)
		}
		// What it read is what the subject says: the subject of that
		// source and tenant is the one parsed (or its tenant-less form).
		if got := proto.SubmitSubject(source, tenant); got != subject && !(tenant == proto.DefaultTenant && proto.SubmitSubject(source, "") == subject) {
			t.Fatalf("%q: parsed as %q, %q, which give %q", subject, source, tenant, got)
		}
	})
}

func TestEventSubject(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ev   proto.Event
		want string
	}{
		{name: "in queue", ev: proto.Event{Type: proto.EventStatus, Status: proto.StatusInQueue}, want: "cf.events.j1.status.acme"},
		{name: "in progress", ev: proto.Event{Type: proto.EventStatus, Status: proto.StatusInProgress}, want: "cf.events.j1.status.acme"},
		{name: "completed", ev: proto.Event{Type: proto.EventStatus, Status: proto.StatusCompleted}, want: "cf.events.j1.final.acme"},
		{name: "failed", ev: proto.Event{Type: proto.EventStatus, Status: proto.StatusFailed}, want: "cf.events.j1.final.acme"},
		{name: "cancelled", ev: proto.Event{Type: proto.EventStatus, Status: proto.StatusCancelled}, want: "cf.events.j1.final.acme"},
		{name: "timed out", ev: proto.Event{Type: proto.EventStatus, Status: proto.StatusTimedOut}, want: "cf.events.j1.final.acme"},
		{name: "progress", ev: proto.Event{Type: proto.EventProgress, Progress: &proto.Progress{Value: 1, Max: 2}}, want: "cf.events.j1.progress.acme"},
		{name: "stream chunk", ev: proto.Event{Type: proto.EventStream, Output: json.RawMessage(`1`)}, want: "cf.events.j1.progress.acme"},
		{name: "progress update", ev: proto.Event{Type: proto.EventProgressUpdate, Output: json.RawMessage(`"x"`)}, want: "cf.events.j1.progress.acme"},
		{name: "preview", ev: proto.Event{Type: proto.EventPreview, Preview: &proto.Preview{Mime: "image/jpeg"}}, want: "cf.previews.j1.acme"},
		{name: "unknown type", ev: proto.Event{Type: "later"}, want: "cf.events.j1.progress.acme"},
		{name: "status type with a terminal status only", ev: proto.Event{Type: proto.EventProgress, Status: proto.StatusCompleted}, want: "cf.events.j1.progress.acme"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ev := tt.ev
			ev.JobID, ev.Tenant = "j1", "acme"
			require.Equal(t, tt.want, ev.Subject())
		})
	}
}

func FuzzDecodeJob(f *testing.F) {
	f.Add([]byte(`{"v":1,"id":"job-1","input":{"workflow":{}},"policy":{"ttl":5},"lane":"batch"}`))
	f.Add([]byte(`{"id":"a.b"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		j, err := proto.DecodeJob(data)
		if err == nil {
			if proto.ValidID(j.ID) != nil {
				t.Fatalf("accepted invalid id %q", j.ID)
			}
			if j.Lane != "" && !j.Lane.Valid() {
				t.Fatalf("accepted invalid lane %q", j.Lane)
			}
		}
	})
}

func FuzzDecodeEvent(f *testing.F) {
	f.Add([]byte(`{"v":1,"job_id":"a","type":"status","status":"COMPLETED"}`))
	f.Add([]byte(`{"job_id":"a","type":"progress","progress":{"node":"3","value":1,"max":20,"percent":5}}`))
	f.Add([]byte(`{"job_id":"a","type":"status","status":"IN_QUEUE"}`))
	f.Add([]byte(`{"job_id":"a","type":"preview","preview":{"mime":"image/jpeg","data":"AAAA"}}`))
	f.Add([]byte(`{"job_id":"a","type":"stream","output":{"x":1}}`))
	f.Add([]byte(`{"job_id":"a","tenant":"acme","type":"status","status":"FAILED"}`))
	f.Add([]byte(`{"job_id":"a","tenant":"a.b","type":"status","status":"FAILED"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ev, err := proto.DecodeEvent(data)
		if err != nil {
			return
		}
		if ev.Type == proto.EventStatus && !ev.Status.Valid() {
			t.Fatalf("accepted invalid status %q", ev.Status)
		}
		// Every decoded event has a subject of its job: one of its classes,
		// or its preview subject.
		subj := ev.Subject()
		switch subj {
		case proto.EventSubject(ev.JobID, proto.EventClassStatus, ev.Tenant), proto.EventSubject(ev.JobID, proto.EventClassFinal, ev.Tenant),
			proto.EventSubject(ev.JobID, proto.EventClassProgress, ev.Tenant), proto.PreviewSubject(ev.JobID, ev.Tenant):
		default:
			t.Fatalf("event %+v has subject %q", ev, subj)
		}
		if (subj == proto.EventSubject(ev.JobID, proto.EventClassFinal, ev.Tenant)) != (ev.Type == proto.EventStatus && ev.Status.Terminal()) {
			t.Fatalf("event %+v: final subject %q only for terminal status events", ev, subj)
		}
	})
}

func TestHostWorkerID(t *testing.T) {
	t.Parallel()
	require.Equal(t, "gpu-box-1_a", proto.HostWorkerID("gpu.box 1_a"))
	require.Equal(t, "gpuworker", proto.HostWorkerID(""))
	require.NoError(t, proto.ValidID(proto.HostWorkerID(strings.Repeat("h", 300))))
}
