package rdb

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/comfyfleet/comfyfleet/proto"
)

// maxDigits bounds the integer fields: 15 digits stay exact in the script's
// Lua numbers and cover Unix milliseconds for the next 30,000 years.
const maxDigits = 15

// decodeRecord reads the hash of the record at key. Missing optional fields
// are zero; unknown fields are ignored, so a newer writer's fields do not
// break an older reader. A field that is present but unreadable is a
// *CorruptError naming the field and its value.
func decodeRecord(key string, h map[string]string) (*proto.Record, error) {
	bad := func(field, reason string) error {
		v := h[field]
		if len(v) > 64 {
			v = v[:64] + "…"
		}
		return &CorruptError{Key: key, Field: field, Value: v, Reason: reason}
	}
	r := &proto.Record{
		ID:       h["id"],
		Status:   proto.Status(h["status"]),
		WorkerID: h["worker_id"],
		Pool:     h["pool"],
		Lane:     proto.Lane(h["lane"]),
		Source:   h["source"],
		Tenant:   h["tenant"],
		BatchID:  h["batch_id"],
		Error:    h["error"],
	}
	if r.ID == "" {
		return nil, bad("id", "is missing")
	}
	if !r.Status.Valid() {
		return nil, bad("status", "is not a status")
	}
	if r.Lane != "" && !r.Lane.Valid() {
		return nil, bad("lane", "is not a lane")
	}
	switch {
	case r.Tenant == "":
		r.Tenant = proto.DefaultTenant // a record made before tenants
	case proto.ValidID(r.Tenant) != nil:
		return nil, bad("tenant", "is not a tenant name")
	}
	ints := []struct {
		field string
		dst   *int
	}{{"attempt", &r.Attempt}, {"retries", &r.Retries}}
	for _, f := range ints {
		v, ok := h[f.field]
		if !ok {
			continue
		}
		n, ok := parseCount(v)
		if !ok {
			return nil, bad(f.field, "is not a non-negative integer")
		}
		*f.dst = int(n)
	}
	times := []struct {
		field string
		dst   *time.Time
	}{{"submitted_at", &r.SubmittedAt}, {"started_at", &r.StartedAt}, {"finished_at", &r.FinishedAt}}
	for _, f := range times {
		v, ok := h[f.field]
		if !ok {
			continue
		}
		ms, ok := parseCount(v)
		if !ok {
			return nil, bad(f.field, "is not a time in Unix milliseconds")
		}
		if ms > 0 {
			*f.dst = time.UnixMilli(ms).UTC()
		}
	}
	if v, ok := h["output"]; ok && v != "" {
		if !json.Valid([]byte(v)) {
			return nil, bad("output", "is not valid JSON")
		}
		r.Output = json.RawMessage(v)
	}
	if v, ok := h["webhook"]; ok && v != "" {
		o, err := decodeWebhookOutcome(v)
		if err != nil {
			return nil, bad("webhook", err.Error())
		}
		r.Webhook = o
	}
	return r, nil
}

// parseCount reads 1 to maxDigits decimal digits, as the script does.
func parseCount(v string) (int64, bool) {
	if v == "" || len(v) > maxDigits {
		return 0, false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil
}
