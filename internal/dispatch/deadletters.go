package dispatch

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// maxReplayBody bounds a replay's body: a job's secrets.
const maxReplayBody = 64 << 10

// DeadLetterRoutes are the dead letters' HTTP API:
//
//	GET  /dlq?pool=P&limit=N   {"dead_letters": [queue.DeadLetter…]}
//	POST /dlq/{seq}/replay     {"id": …, "status": "IN_QUEUE", "retries": n, "secrets": {…}}
//
// Listing reads CF_DLQ; a replay is the lifecycle core's. A dead letter
// keeps its job without the job's secrets (its secrets_removed names
// them): a replay's body may give them again, as proto.Secrets
// ({"comfy_org_api_key": "…", "s3Config": {"accessId": "…",
// "accessSecret": "…"}}); those it does not give come from the worker's
// own settings. The answer's secrets says which, per secret: "supplied"
// or "worker".
func DeadLetterRoutes(q *queue.Client, core *lifecycle.Core, log *zap.Logger) []Route {
	if log == nil {
		log = zap.NewNop()
	}
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
			unavailable(w, log, "read dead letters", err)
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
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxReplayBody))
		if err != nil {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("a replay's body (its secrets) is at most %d bytes", maxReplayBody))
			return
		}
		secrets, err := proto.DecodeSecrets(body)
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		rep, err := core.Replay(r.Context(), seq, secrets)
		var ie *proto.InputError
		switch {
		case errors.Is(err, queue.ErrNoDeadLetter):
			writeError(w, http.StatusNotFound, err.Error())
		case errors.As(err, &ie):
			writeError(w, http.StatusBadRequest, err.Error())
		case errors.Is(err, rdb.ErrIllegal), errors.Is(err, rdb.ErrTerminal):
			writeError(w, http.StatusConflict, err.Error())
		case err != nil:
			unavailable(w, log, "replay dead letter", err)
		default:
			writeJSON(w, http.StatusOK, map[string]any{"id": rep.Record.ID, "status": rep.Record.Status, "retries": rep.Record.Retries,
				"secrets": rep.Secrets})
		}
	}
	return []Route{
		{Pattern: "GET /dlq", Handler: http.HandlerFunc(list)},
		{Pattern: "POST /dlq/{seq}/replay", Handler: http.HandlerFunc(replay)},
	}
}
