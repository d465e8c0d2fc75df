package rdb

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/proto"
)

func TestDecodeRecord(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		hash    map[string]string
		want    *proto.Record
		wantErr string
	}{
		{
			name: "complete",
			hash: map[string]string{"id": "j", "status": "COMPLETED", "attempt": "2", "retries": "1",
				"worker_id": "w", "pool": "p", "lane": "batch", "source": "api", "tenant": "acme", "batch_id": "b",
				"submitted_at": "1000", "started_at": "2500", "finished_at": "4000",
				"output": `{"images":[]}`, "error": "", "retention_ms": "60000", "future_field": "x"},
			want: &proto.Record{ID: "j", Status: proto.StatusCompleted, Attempt: 2, Retries: 1,
				WorkerID: "w", Pool: "p", Lane: proto.LaneBatch, Source: "api", Tenant: "acme", BatchID: "b",
				SubmittedAt: time.UnixMilli(1000).UTC(), StartedAt: time.UnixMilli(2500).UTC(),
				FinishedAt: time.UnixMilli(4000).UTC(), Output: json.RawMessage(`{"images":[]}`)},
		},
		{
			name: "minimal: a record from before tenants is the default tenant's",
			hash: map[string]string{"id": "j", "status": "IN_QUEUE"},
			want: &proto.Record{ID: "j", Status: proto.StatusInQueue, Tenant: proto.DefaultTenant},
		},
		{name: "bad tenant", hash: map[string]string{"id": "j", "status": "IN_QUEUE", "tenant": "a.b"}, wantErr: `field tenant: "a.b" is not a tenant name`},
		{name: "no id", hash: map[string]string{"status": "IN_QUEUE"}, wantErr: `field id: "" is missing`},
		{name: "bad status", hash: map[string]string{"id": "j", "status": "RUNNING"}, wantErr: `field status: "RUNNING" is not a status`},
		{name: "bad attempt", hash: map[string]string{"id": "j", "status": "IN_QUEUE", "attempt": "-1"}, wantErr: `field attempt: "-1" is not a non-negative integer`},
		{name: "bad time", hash: map[string]string{"id": "j", "status": "IN_QUEUE", "started_at": "2026-01-01"}, wantErr: `field started_at: "2026-01-01" is not a time in Unix milliseconds`},
		{name: "bad output", hash: map[string]string{"id": "j", "status": "FAILED", "output": "{"}, wantErr: `field output: "{" is not valid JSON`},
		{name: "bad webhook", hash: map[string]string{"id": "j", "status": "FAILED", "webhook": `{"delivered":1}`}, wantErr: `field webhook: "{\"delivered\":1}" is not a webhook outcome`},
		{name: "webhook without attempts", hash: map[string]string{"id": "j", "status": "FAILED", "webhook": `{"delivered":true}`}, wantErr: `field webhook: "{\"delivered\":true}" has attempts below 1`},
		{name: "long value shortened", hash: map[string]string{"id": "j", "status": strings.Repeat("X", 100)}, wantErr: `field status: "` + strings.Repeat("X", 64) + `…" is not a status`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := decodeRecord("cf:job:j", tt.hash)
			if tt.wantErr != "" {
				require.ErrorIs(t, err, ErrCorrupt)
				require.ErrorContains(t, err, "corrupt status record cf:job:j: "+tt.wantErr)
				require.Nil(t, got)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

// FuzzDecodeWebhookOutcome: the record's webhook field, as any writer
// could leave it, is read or refused with a reason, never half read.
func FuzzDecodeWebhookOutcome(f *testing.F) {
	f.Add(`{"delivered":true,"attempts":1,"lastStatus":200}`)
	f.Add(`{"delivered":false,"attempts":3,"error":"timed out"}`)
	f.Add(`{"delivered":false,"attempts":0}`)
	f.Add(`{"attempts":2,"lastStatus":99}`)
	f.Add(`{"attempts":2} {}`)
	f.Add(`null`)
	f.Fuzz(func(t *testing.T, v string) {
		o, err := decodeWebhookOutcome(v)
		if err != nil {
			require.Nil(t, o)
			require.NotEmpty(t, err.Error())
			return
		}
		require.GreaterOrEqual(t, o.Attempts, 1)
		require.True(t, o.LastStatus == 0 || o.LastStatus >= 100 && o.LastStatus <= 599)
		again, err := json.Marshal(o)
		require.NoError(t, err)
		back, err := decodeWebhookOutcome(string(again))
		require.NoError(t, err)
		require.Equal(t, o, back)
	})
}

// encodeRecord writes a record the way the script does.
func encodeRecord(r *proto.Record) map[string]string {
	h := map[string]string{"id": r.ID, "status": string(r.Status),
		"attempt": strconv.Itoa(r.Attempt), "retries": strconv.Itoa(r.Retries)}
	set := func(k, v string) {
		if v != "" {
			h[k] = v
		}
	}
	set("worker_id", r.WorkerID)
	set("pool", r.Pool)
	set("lane", string(r.Lane))
	set("source", r.Source)
	set("batch_id", r.BatchID)
	set("error", r.Error)
	set("output", string(r.Output))
	for k, v := range map[string]time.Time{"submitted_at": r.SubmittedAt, "started_at": r.StartedAt, "finished_at": r.FinishedAt} {
		if !v.IsZero() {
			h[k] = strconv.FormatInt(v.UnixMilli(), 10)
		}
	}
	return h
}

// FuzzDecodeRecord feeds arbitrary field values (each present or not) to
// the decoder: it must never panic, must name the field it rejects, and
// whatever it accepts must be a sane record that encodes back to itself.
func FuzzDecodeRecord(f *testing.F) {
	f.Add("j", "COMPLETED", "2", "1", "batch", "1000", "2500", "4000", `{"images":[]}`, uint16(0xffff))
	f.Add("j", "IN_QUEUE", "0", "0", "", "1772366400000", "", "", "", uint16(0b100011))
	f.Add("j", "FAILED", "01", "0", "interactive", "0", "1e3", "-5", `{"x":`, uint16(0xffff))
	f.Add("", "RUNNING", "x", "", "fast", "", "", "", "null", uint16(0xffff))
	f.Add("j", "TIMED_OUT", "999999999999999", "1000000000000000", "batch", "1", "2", "3", "[1,2]", uint16(0xffff))
	f.Fuzz(func(t *testing.T, id, status, attempt, retries, lane, submitted, started, finished, output string, present uint16) {
		fields := []string{"id", "status", "attempt", "retries", "lane", "submitted_at", "started_at", "finished_at", "output"}
		values := []string{id, status, attempt, retries, lane, submitted, started, finished, output}
		h := map[string]string{}
		for i, f := range fields {
			if present&(1<<i) != 0 {
				h[f] = values[i]
			}
		}
		rec, err := decodeRecord("k", h)
		if err != nil {
			var ce *CorruptError
			require.True(t, errors.As(err, &ce), "error %v is not a *CorruptError", err)
			require.ErrorIs(t, err, ErrCorrupt)
			require.Contains(t, fields, ce.Field)
			require.Contains(t, err.Error(), "field "+ce.Field)
			require.Nil(t, rec)
			return
		}
		require.NotEmpty(t, rec.ID)
		require.True(t, rec.Status.Valid())
		require.True(t, rec.Lane == "" || rec.Lane.Valid())
		require.GreaterOrEqual(t, rec.Attempt, 0)
		require.GreaterOrEqual(t, rec.Retries, 0)
		require.True(t, rec.Output == nil || json.Valid(rec.Output))
		again, err := decodeRecord("k", encodeRecord(rec))
		require.NoError(t, err)
		require.Equal(t, rec, again)
	})
}
