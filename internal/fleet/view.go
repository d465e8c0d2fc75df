package fleet

import (
	"context"
	"sort"
	"strings"

	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// View is the fleet's state as the dispatcher serves it on /fleet and
// `comfyfleet fleet` shows it: the live workers, every pool's lanes, the
// intake, the dead letters and the job totals.
type View struct {
	Workers []proto.Heartbeat `json:"workers"`
	Lanes   []queue.LaneDepth `json:"lanes"`
	// Intake is the number of submissions no dispatcher has read yet.
	Intake uint64 `json:"intake"`
	// DLQ is the number of dead letters kept.
	DLQ uint64 `json:"dlq"`
	// Totals counts the jobs that reached each terminal status, and the
	// other counters (RETRIED, DUPLICATE, RECREATED), since the counters
	// began.
	Totals map[proto.Status]int64 `json:"totals"`
	// Paused are the paused lanes, "<pool>/<lane>" (proto.PausedLane):
	// their jobs stay queued. A worker confirms that it skips one in its
	// heartbeat's paused.
	Paused []string `json:"paused"`
	// Draining are the ids of the workers told to drain.
	Draining []string `json:"draining"`
	// JobsPerMin are the jobs that ended per minute, by lane
	// ("<pool>/<lane>"), over about the last minute.
	JobsPerMin map[string]float64 `json:"jobs_per_min"`
}

// ReadView reads the fleet's state: the workers and totals from Redis,
// the rest from the streams.
func ReadView(ctx context.Context, db *rdb.DB, q *queue.Client) (*View, error) {
	v := &View{}
	var err error
	if v.Workers, err = db.Workers(ctx); err != nil {
		return nil, err
	}
	sort.Slice(v.Workers, func(i, j int) bool { return v.Workers[i].ID < v.Workers[j].ID })
	if v.Totals, err = db.Counts(ctx); err != nil {
		return nil, err
	}
	ctl, err := db.ReadControls(ctx)
	if err != nil {
		return nil, err
	}
	v.Paused, v.Draining = ctl.Paused, ctl.Draining
	if v.JobsPerMin, err = db.LaneRates(ctx); err != nil {
		return nil, err
	}
	pools := make([]string, 0, len(v.Workers)+len(v.Paused))
	for _, w := range v.Workers {
		pools = append(pools, w.Pool)
	}
	// A paused lane shows although no worker of its pool is up.
	for _, pl := range v.Paused {
		if pool, _, ok := strings.Cut(pl, "/"); ok {
			pools = append(pools, pool)
		}
	}
	o, err := q.ReadOverview(ctx, pools)
	if err != nil {
		return nil, err
	}
	v.Intake, v.DLQ, v.Lanes = o.Intake, o.DLQ, o.Lanes
	return v, nil
}
