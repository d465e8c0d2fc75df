package dispatch

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// DeadLetterRoutes are the dead letters' HTTP API:
//
//	GET  /dlq?pool=P&limit=N   {"dead_letters": [queue.DeadLetter…]}
//	POST /dlq/{seq}/replay     {"id": …, "status": "IN_QUEUE", "retries": n}
//
// Listing reads CF_DLQ; a replay is the lifecycle core's.
func DeadLetterRoutes(q *queue.Client, core *lifecycle.Core) []Route {
	list := func(w http.ResponseWriter, r *http.Request) {
		pool := r.URL.Query().Get("pool")
		if pool != "" {
			if err := proto.ValidID(pool); err != nil {
				writeError(w, http.StatusBadRequest, "pool: "+err.Error())
				return
			}
		}
		limit := 0
		if v := r.URL.Query().Get("limit"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 10000 {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("limit %q is not a number from 1 to 10000", v))
				return
			}
			limit = n
		}
		dls, err := q.DeadLetters(r.Context(), pool, limit)
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"dead_letters": dls})
	}
	replay := func(w http.ResponseWriter, r *http.Request) {
		seq, err := strconv.ParseUint(r.PathValue("seq"), 10, 64)
		if err != nil || seq == 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("%q is not a dead letter's sequence number", r.PathValue("seq")))
			return
		}
		rec, err := core.Replay(r.Context(), seq)
		switch {
		case errors.Is(err, queue.ErrNoDeadLetter):
			writeError(w, http.StatusNotFound, err.Error())
		case errors.Is(err, rdb.ErrIllegal), errors.Is(err, rdb.ErrTerminal):
			writeError(w, http.StatusConflict, err.Error())
		case err != nil:
			writeError(w, http.StatusServiceUnavailable, err.Error())
		default:
			writeJSON(w, http.StatusOK, map[string]any{"id": rec.ID, "status": rec.Status, "retries": rec.Retries})
		}
	}
	return []Route{
		{Pattern: "GET /dlq", Handler: http.HandlerFunc(list)},
		{Pattern: "POST /dlq/{seq}/replay", Handler: http.HandlerFunc(replay)},
	}
}
