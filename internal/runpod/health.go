package runpod

import (
	"net/http"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// HealthView is RunPod's /health answer.
type HealthView struct {
	Jobs    HealthJobs     `json:"jobs"`
	Workers map[string]int `json:"workers"`
}

// HealthJobs counts jobs as RunPod's /health does.
type HealthJobs struct {
	Completed  int64 `json:"completed"`
	Failed     int64 `json:"failed"`
	InProgress int64 `json:"inProgress"`
	InQueue    int64 `json:"inQueue"`
	Retried    int64 `json:"retried"`
}

func (a *API) handleHealth(w http.ResponseWriter, r *http.Request) {
	queued, running, err := a.q.Depth(r.Context())
	if err != nil {
		a.unavailable(w, "read queue depth", err)
		return
	}
	counts, err := a.core.Counts(r.Context())
	if err != nil {
		a.unavailable(w, "read job counts", err)
		return
	}
	workers := map[string]int{"idle": 0, "initializing": 0, "ready": 0, "running": 0, "throttled": 0, "unhealthy": 0}
	list, err := a.db.Workers(r.Context())
	if err != nil {
		a.unavailable(w, "list workers", err)
		return
	}
	for _, wk := range list {
		workers[wk.State]++
	}
	workers["ready"] = workers["idle"] + workers["running"]
	WriteJSON(w, http.StatusOK, HealthView{
		Jobs: HealthJobs{
			Completed:  counts[proto.StatusCompleted],
			Failed:     counts[proto.StatusFailed] + counts[proto.StatusTimedOut],
			InProgress: int64(running),
			InQueue:    int64(queued),
			Retried:    counts[rdb.CountRetried],
		},
		Workers: workers,
	})
}
