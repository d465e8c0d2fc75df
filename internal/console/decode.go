package console

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/comfyfleet/comfyfleet/proto"
)

// Bounds of the console's inputs.
const (
	maxBody     = 4 << 10
	maxQuery    = 128
	defaultList = 100
	maxList     = 1000
)

// jobQuery is a search of the recent jobs: GET /console/api/jobs?q=…&
// batch=…&tenant=…&status=…&limit=….
type jobQuery struct {
	// Q matches a part of the job's id or batch id, case-insensitively.
	Q      string
	Batch  string
	Tenant string
	Status proto.Status
	Limit  int
}

// decodeJobQuery reads a search of the recent jobs; an unknown parameter
// or a bad value is an error naming it.
func decodeJobQuery(v url.Values) (jobQuery, error) {
	q := jobQuery{Limit: defaultList}
	for k, vals := range v {
		if len(vals) != 1 {
			return q, fmt.Errorf("query parameter %s: give it once", k)
		}
		val := vals[0]
		switch k {
		case "q":
			if len(val) > maxQuery {
				return q, fmt.Errorf("query parameter q: at most %d bytes", maxQuery)
			}
			q.Q = strings.ToLower(strings.TrimSpace(val))
		case "batch", "tenant":
			if val == "" {
				continue
			}
			if err := proto.ValidID(val); err != nil {
				return q, fmt.Errorf("query parameter %s: %v", k, err)
			}
			if k == "batch" {
				q.Batch = val
			} else {
				q.Tenant = val
			}
		case "status":
			if val == "" {
				continue
			}
			q.Status = proto.Status(strings.ToUpper(val))
			if !q.Status.Valid() {
				return q, fmt.Errorf("query parameter status: %q is not a status (IN_QUEUE, IN_PROGRESS, COMPLETED, FAILED, CANCELLED, TIMED_OUT)", val)
			}
		case "limit":
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 || n > maxList {
				return q, fmt.Errorf("query parameter limit: %q is not a number from 1 to %d", val, maxList)
			}
			q.Limit = n
		default:
			return q, fmt.Errorf("query parameter %s: unknown (q, batch, tenant, status, limit)", k)
		}
	}
	return q, nil
}

// match reports whether a record is one the search asks for.
func (q jobQuery) match(r *proto.Record) bool {
	switch {
	case q.Batch != "" && r.BatchID != q.Batch,
		q.Tenant != "" && r.Tenant != q.Tenant,
		q.Status != "" && r.Status != q.Status:
		return false
	case q.Q == "":
		return true
	}
	return strings.Contains(strings.ToLower(r.ID), q.Q) || strings.Contains(strings.ToLower(r.BatchID), q.Q)
}

// pauseRequest is the body of POST /console/api/pause and /resume:
// {"pool": "default", "lane": "batch"}; no lane means both of the pool's.
type pauseRequest struct {
	Pool string     `json:"pool"`
	Lane proto.Lane `json:"lane"`
}

// lanes are the lanes the request names.
func (p pauseRequest) lanes() []proto.Lane {
	if p.Lane == "" {
		return []proto.Lane{proto.LaneInteractive, proto.LaneBatch}
	}
	return []proto.Lane{p.Lane}
}

// decodePause reads a pause or resume body strictly: one JSON object with
// pool (a valid id) and optionally lane ("interactive" or "batch"),
// nothing else.
func decodePause(body []byte) (pauseRequest, error) {
	var p pauseRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return p, fmt.Errorf("body: %s", proto.DescribeJSONError(err))
	}
	if dec.More() {
		return p, fmt.Errorf("body: one JSON object, nothing after it")
	}
	if err := proto.ValidID(p.Pool); err != nil {
		return p, fmt.Errorf("body: field pool: %v", err)
	}
	if p.Lane != "" && !p.Lane.Valid() {
		return p, fmt.Errorf("body: field lane: %q is not a lane (interactive or batch; none for both)", p.Lane)
	}
	return p, nil
}
