package runpod

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// handleStatus answers /status/{id}. ?ttl=<ms> shortens how long a
// finished job's result is kept (RunPod: "remove a job result sooner").
func (a *API) handleStatus(w http.ResponseWriter, r *http.Request) {
	id, ok := jobID(w, r)
	if !ok {
		return
	}
	var keep time.Duration
	if s := r.URL.Query().Get("ttl"); s != "" {
		ms, err := strconv.ParseInt(s, 10, 64)
		if err != nil || ms <= 0 || ms > proto.MaxRetention {
			WriteError(w, http.StatusBadRequest, fmt.Sprintf("query parameter ttl=%q is not a whole number of milliseconds from 1 to %d (30 days)", proto.Shorten(s), proto.MaxRetention))
			return
		}
		keep = proto.Millis(ms)
	}
	rec, ok := a.record(w, r, id)
	if !ok {
		return
	}
	if keep > 0 && rec.Status.Terminal() {
		if _, err := a.db.ShortenRetention(r.Context(), id, keep); err != nil && !errors.Is(err, rdb.ErrNotFound) {
			a.log.Warn("shorten retention", zap.String("job_id", id), zap.Error(err))
		}
	}
	a.writeView(w, r.Context(), rec)
}

// handleStatusSync answers /status-sync/{id}: /status, but held up to
// ?wait= (default 90 s) for the job to finish.
func (a *API) handleStatusSync(w http.ResponseWriter, r *http.Request) {
	id, ok := jobID(w, r)
	if !ok {
		return
	}
	wait, err := parseWait(r, a.cfg.DefaultWait, time.Second)
	if err != nil {
		WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	// The wake is in place before the record is read, so a job that
	// ends after the read wakes this request.
	wake, err := a.q.WakeOnFinal(id)
	if err != nil {
		a.unavailable(w, "subscribe to job events", err)
		return
	}
	defer wake.Stop()
	if _, ok := a.record(w, r, id); !ok {
		return
	}
	a.writeWhenDone(w, r, id, wake, wait)
}

// record reads a job's record; on failure it has answered: 404 for an
// unknown or expired job, for another tenant's job, which does not exist
// for the caller, and for a job of another pool than the endpoint's
// (ENDPOINTS), which belongs to another endpoint.
func (a *API) record(w http.ResponseWriter, r *http.Request, id string) (*proto.Record, bool) {
	rec, err := a.core.Get(r.Context(), id)
	if errors.Is(err, rdb.ErrNotFound) || (err == nil && (!principal(r).Sees(rec.Tenant) || !a.scopeOf(r).holds(rec.Pool))) {
		notFound(w, id)
		return nil, false
	}
	if err != nil {
		a.unavailable(w, "read job status", err)
		return nil, false
	}
	return rec, true
}

func notFound(w http.ResponseWriter, id string) {
	WriteError(w, http.StatusNotFound, fmt.Sprintf("job %s not found (unknown, or its result expired)", id))
}
