package runpod

import (
	"net/http"
	"slices"

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

// handleHealth answers /health. With Endpoints, /v2/{id}/health counts
// the jobs and workers of id's pool alone: the jobs admitted to its lanes
// (a submission no dispatcher has read yet has no pool until then), its
// counters, and the workers that serve it (as their first pool or one of
// their more pools). Otherwise it counts the whole fleet.
func (a *API) handleHealth(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	sc := a.scopeOf(r)
	var queued, running uint64
	var counts map[proto.Status]int64
	var err error
	if sc.scoped {
		queued, running, err = a.q.PoolDepth(ctx, sc.pool)
	} else {
		queued, running, err = a.q.Depth(ctx)
	}
	if err != nil {
		a.unavailable(w, "read queue depth", err)
		return
	}
	if sc.scoped {
		counts, err = a.core.PoolCounts(ctx, sc.pool)
	} else {
		counts, err = a.core.Counts(ctx)
	}
	if err != nil {
		a.unavailable(w, "read job counts", err)
		return
	}
	workers := map[string]int{"idle": 0, "initializing": 0, "ready": 0, "running": 0, "throttled": 0, "unhealthy": 0}
	list, err := a.db.Workers(ctx)
	if err != nil {
		a.unavailable(w, "list workers", err)
		return
	}
	for _, wk := range list {
		if sc.scoped && wk.Pool != sc.pool && !slices.Contains(wk.MorePools, sc.pool) {
			continue
		}
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
