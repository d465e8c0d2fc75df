package proto_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/url"
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
		{name: "id wrong type", raw: `{"id":5}`, wantErr: "field id: got a number, want a string"},
		{name: "null message", raw: `null`, wantErr: "decode job message: got JSON null, want an object"},
		{name: "id by another case", raw: `{"ID":"job-1","input":{}}`},
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

// TestDecodeJobNamesEveryBadField gives every field of a Job a value of
// the wrong type and, for the checked ones, a value out of range: each is
// refused with a message naming the field, and the job still comes back
// under its id (and its batch), so that the dispatcher can fail it with
// the reason rather than lose it on cf.rejects.
func TestDecodeJobNamesEveryBadField(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		fields  string // added to {"id":"job-1","batch_id":"b-1", …}
		wantErr string
	}{
		// Wrong types.
		{"v string", `"v":"1"`, "field v: got a string, want a whole number"},
		{"v fraction", `"v":1.5`, "field v: 1.5 is not a whole number"},
		{"webhook number", `"webhook":5`, "field webhook: got a number, want a string"},
		{"policy string", `"policy":"fast"`, "field policy: got a string, want an object"},
		{"executionTimeout string", `"policy":{"executionTimeout":"10s"}`, "field policy.executionTimeout: got a string, want a whole number of milliseconds"},
		{"ttl fraction", `"policy":{"ttl":1.5}`, "field policy.ttl: 1.5 is not a whole number of milliseconds from 0 to 604800000 (7 days)"},
		{"lowPriority string", `"policy":{"lowPriority":"yes"}`, "field policy.lowPriority: got a string, want true or false"},
		{"s3Config array", `"s3Config":[]`, "field s3Config: got an array, want an object"},
		{"s3Config secret number", `"s3Config":{"accessSecret":12345}`, "field s3Config.accessSecret: got a number, want a string"},
		{"pool number", `"pool":1`, "field pool: got a number, want a string"},
		{"lane object", `"lane":{}`, "field lane: got an object, want a string"},
		{"source bool", `"source":true`, "field source: got a boolean, want a string"},
		{"index string", `"index":"x"`, "field index: got a string, want a whole number from 0 to 2147483647"},
		{"index fraction", `"index":0.5`, "field index: 0.5 is not a whole number"},
		{"output string", `"output":"s3"`, "field output: got a string, want an object"},
		{"s3_prefix number", `"output":{"s3_prefix":1}`, "field output.s3_prefix: got a number, want a string"},
		{"submitted_at number", `"submitted_at":1700000000`, "field submitted_at: got a number, want an RFC 3339 time"},
		{"submitted_at prose", `"submitted_at":"yesterday"`, `field submitted_at: "yesterday" is not an RFC 3339 time`},
		{"retention string", `"retention_ms":"1h"`, "field retention_ms: got a string, want a whole number of milliseconds"},
		// Out of range.
		{"v negative", `"v":-1`, "field v: -1 is not a contract version"},
		{"v newer", `"v":2`, "job message version 2 is newer than this server's 1"},
		{"executionTimeout max int64", `"policy":{"executionTimeout":9223372036854775807}`, "field policy.executionTimeout: 9223372036854775807 ms is more than the limit of 604800000 ms (7 days)"},
		{"executionTimeout past int64", `"policy":{"executionTimeout":9223372036854775808}`, "field policy.executionTimeout: 9223372036854775808 is not a whole number of milliseconds from 0 to 604800000"},
		{"executionTimeout negative", `"policy":{"executionTimeout":-1}`, "field policy.executionTimeout: -1 is negative"},
		{"ttl far", `"policy":{"ttl":9000000000000000}`, "field policy.ttl: 9000000000000000 ms is more than the limit of 604800000 ms (7 days)"},
		{"ttl just over", `"policy":{"ttl":604800001}`, "field policy.ttl: 604800001 ms is more than the limit"},
		{"ttl negative", `"policy":{"ttl":-1}`, "field policy.ttl: -1 is negative"},
		{"retention far", `"retention_ms":2592000001`, "field retention_ms: 2592000001 ms is more than the limit of 2592000000 ms (30 days)"},
		{"retention negative", `"retention_ms":-1`, "field retention_ms: -1 is negative"},
		{"index negative", `"index":-1`, "field index: -1 is negative"},
		{"index past int32", `"index":2147483648`, "field index: 2147483648 is more than the limit of 2147483647"},
		{"index past int64", `"index":1e30`, "field index: 1e30 is not a whole number"},
		{"submitted_at before 2000", `"submitted_at":"1969-12-31T23:59:59Z"`, "field submitted_at: 1969-12-31T23:59:59Z is before 2000-01-01T00:00:00Z"},
		{"webhook file", `"webhook":"file:///etc/passwd"`, `field webhook: has the scheme "file"; give an http or https URL`},
		{"webhook no scheme", `"webhook":"hooks.example.com/x"`, "field webhook: has no scheme"},
		{"webhook userinfo", `"webhook":"https://user:pw@hooks.example.com/x"`, "field webhook: carries credentials"},
		{"webhook no host", `"webhook":"https:///x"`, "field webhook: has no host"},
		{"webhook port only", `"webhook":"http://:8080/x"`, "field webhook: has no host"},
		{"webhook too long", `"webhook":"https://h.example/` + strings.Repeat("a", proto.MaxWebhookLen) + `"`, "field webhook: is 2066 bytes long, the limit is 2048"},
		{"webhook control", `"webhook":"https://h.example/\u0007"`, "field webhook: is not a URL: net/url: invalid control character in URL"},
		{"pool bad", `"pool":"a.b"`, "field pool: id \"a.b\" has the character '.'"},
		{"lane bad", `"lane":"fast"`, `field lane: "fast" is not a lane`},
		{"source bad", `"source":"a b"`, "field source"},
		{"s3_prefix bidi", `"output":{"s3_prefix":"runs/\u202egnp"}`, `field output.s3_prefix: "runs/\u202egnp" has the control or format character U+202E at byte 5`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			raw := `{"id":"job-1","batch_id":"b-1","input":{"workflow":{}},` + tt.fields + `}`
			j, err := proto.DecodeJob([]byte(raw))
			require.ErrorContains(t, err, tt.wantErr)
			var ie *proto.InputError
			require.True(t, errorsAs(err, &ie), "an *InputError, for the sender")
			require.NotNil(t, j, "the job comes back under its id")
			require.Equal(t, "job-1", j.ID)
			require.Equal(t, "b-1", j.BatchID)
		})
	}
	t.Run("secrets are never repeated", func(t *testing.T) {
		t.Parallel()
		_, err := proto.DecodeJob([]byte(`{"id":"a","s3Config":{"accessId":"x","accessSecret":987654321}}`))
		require.Error(t, err)
		require.NotContains(t, err.Error(), "987654321")
		_, err = proto.DecodeJob([]byte(`{"id":"a","webhook":"ftp://u:token-123@h/x"}`))
		require.Error(t, err)
		require.NotContains(t, err.Error(), "token-123")
	})
	t.Run("bounds are accepted", func(t *testing.T) {
		t.Parallel()
		j, err := proto.DecodeJob([]byte(fmt.Sprintf(`{"id":"a","index":%d,"retention_ms":%d,"policy":{"executionTimeout":%d,"ttl":%d},"submitted_at":"2000-01-01T00:00:00Z","webhook":"HTTPS://h.example:8443/x?t=1"}`,
			proto.MaxIndex, proto.MaxRetention, proto.MaxExecutionTimeout, proto.MaxTTL)))
		require.NoError(t, err)
		require.Equal(t, proto.MaxIndex, *j.Index)
		require.Equal(t, 7*24*time.Hour, proto.Millis(j.Policy.TTL))
	})
}

func TestCheckSubmittedAt(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	require.NoError(t, proto.CheckSubmittedAt(time.Time{}, now))
	require.NoError(t, proto.CheckSubmittedAt(now.Add(-time.Hour), now))
	require.NoError(t, proto.CheckSubmittedAt(now.Add(proto.MaxClockSkew), now), "within the clock skew")
	err := proto.CheckSubmittedAt(now.Add(24*time.Hour), now)
	require.ErrorContains(t, err, "field submitted_at: 2026-05-02T12:00:00Z is 24h0m0s in the future, more than the allowed clock skew of 5m0s")
}

func TestMillisNeverOverflows(t *testing.T) {
	t.Parallel()
	require.Equal(t, time.Duration(0), proto.Millis(-5))
	require.Equal(t, 1500*time.Millisecond, proto.Millis(1500))
	require.Equal(t, time.Duration(math.MaxInt64), proto.Millis(math.MaxInt64), "saturates instead of wrapping to -1ms")
	require.Positive(t, proto.Millis(math.MaxInt64/1_000_000+1))
}

func TestDelayTimeIsNeverNegative(t *testing.T) {
	t.Parallel()
	now := time.Now()
	rec := proto.Record{SubmittedAt: now.Add(time.Minute), StartedAt: now, FinishedAt: now.Add(-time.Second)}
	require.Zero(t, rec.DelayTime(), "a submission clock ahead of the worker's")
	require.Zero(t, rec.ExecutionTime())
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
	f.Add([]byte(`{"id":"a","index":"x"}`))
	f.Add([]byte(`{"id":"a","policy":"fast"}`))
	f.Add([]byte(`{"id":"a","policy":{"executionTimeout":9223372036854775807}}`))
	f.Add([]byte(`{"id":"a","policy":{"ttl":9000000000000000},"retention_ms":99999999999}`))
	f.Add([]byte(`{"id":"a","submitted_at":"2999-01-01T00:00:00Z","index":2147483648}`))
	f.Add([]byte(`{"id":"a","webhook":"file:///etc/passwd"}`))
	f.Add([]byte(`{"id":"a","batch_id":"b","webhook":"https://u:p@h/x","s3Config":{"accessSecret":1}}`))
	f.Add([]byte(`{"id":"a","output":{"s3_prefix":"x\u202e"},"source":"api","v":-1}`))
	f.Add([]byte(`{"ID":"a","Policy":{"TTL":1000}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		j, err := proto.DecodeJob(data)
		if err != nil {
			var ie *proto.InputError
			if !errorsAs(err, &ie) {
				t.Fatalf("untyped error %T: %v", err, err)
			}
			// A message whose "id" is a usable id comes back under it, so
			// that it ends as a FAILED record and not on cf.rejects.
			if id, ok := plainID(data); ok && (j == nil || j.ID != id) {
				t.Fatalf("message with the usable id %q lost it: %v (job %+v)", id, err, j)
			}
			if j != nil && (proto.ValidID(j.ID) != nil || j.BatchID != "" && proto.ValidID(j.BatchID) != nil) {
				t.Fatalf("a refused job carries an invalid id or batch: %+v", j)
			}
			return
		}
		if proto.ValidID(j.ID) != nil {
			t.Fatalf("accepted invalid id %q", j.ID)
		}
		if j.Lane != "" && !j.Lane.Valid() {
			t.Fatalf("accepted invalid lane %q", j.Lane)
		}
		p := j.Policy
		if p.ExecutionTimeout < 0 || p.ExecutionTimeout > proto.MaxExecutionTimeout || p.TTL < 0 || p.TTL > proto.MaxTTL {
			t.Fatalf("accepted a policy out of range: %+v", p)
		}
		if j.Retention < 0 || j.Retention > proto.MaxRetention {
			t.Fatalf("accepted retention_ms %d", j.Retention)
		}
		if j.Index != nil && (*j.Index < 0 || *j.Index > proto.MaxIndex) {
			t.Fatalf("accepted index %d", *j.Index)
		}
		if j.V < 0 || j.V > proto.Version {
			t.Fatalf("accepted v %d", j.V)
		}
		if !j.SubmittedAt.IsZero() && j.SubmittedAt.Before(proto.MinSubmittedAt) {
			t.Fatalf("accepted submitted_at %s", j.SubmittedAt)
		}
		if j.Webhook != "" {
			u, err := url.Parse(j.Webhook)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.User != nil || u.Hostname() == "" {
				t.Fatalf("accepted webhook %q", j.Webhook)
			}
		}
		// Durations taken from the contract never wrap.
		for _, ms := range []int64{p.ExecutionTimeout, p.TTL, j.Retention} {
			if proto.Millis(ms) != time.Duration(ms)*time.Millisecond {
				t.Fatalf("%d ms overflows", ms)
			}
		}
		// What is accepted encodes and decodes to the same job.
		again, err := json.Marshal(j)
		if err != nil {
			t.Fatalf("encode accepted job: %v", err)
		}
		k, err := proto.DecodeJob(again)
		if err != nil {
			t.Fatalf("an accepted job, encoded again, is refused: %v\n%s", err, again)
		}
		if k.ID != j.ID || k.Policy != j.Policy || k.Retention != j.Retention || k.Webhook != j.Webhook || !k.SubmittedAt.Equal(j.SubmittedAt) {
			t.Fatalf("round trip changed the job:\n%+v\n%+v", j, k)
		}
	})
}

// plainID is the message's "id" when it has exactly one key that is "id"
// in any case, holding a usable id.
func plainID(data []byte) (string, bool) {
	var m map[string]json.RawMessage
	if json.Unmarshal(data, &m) != nil {
		return "", false
	}
	var id string
	n := 0
	for k, v := range m {
		if strings.EqualFold(k, "id") {
			n++
			if k != "id" || json.Unmarshal(v, &id) != nil {
				return "", false
			}
		}
	}
	return id, n == 1 && proto.ValidID(id) == nil
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
