package runpod

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/proto"
)

// laneDepths caches the waiting jobs of each lane for the per-lane
// backpressure limit (Config.MaxQueuedPerLane): each lane's depth is read
// at most once a second per replica.
type laneDepths struct {
	mu   sync.Mutex
	seen map[string]laneSample
}

type laneSample struct {
	at     time.Time
	queued uint64
}

// laneFull reports whether the pool's lane holds MaxQueuedPerLane waiting
// jobs. A depth that cannot be read lets the job through: the submit
// itself will tell whether NATS is there.
func (a *API) laneFull(ctx context.Context, pool string, lane proto.Lane) (uint64, bool) {
	if a.cfg.MaxQueuedPerLane <= 0 {
		return 0, false
	}
	subj := proto.JobSubject(pool, lane)
	a.lanes.mu.Lock()
	defer a.lanes.mu.Unlock()
	s, ok := a.lanes.seen[subj]
	if !ok || time.Since(s.at) > time.Second {
		n, err := a.q.LaneQueued(ctx, pool, lane)
		if err != nil {
			a.log.Warn("read lane depth", zap.String("subject", subj), zap.Error(err))
			return 0, false
		}
		if a.lanes.seen == nil {
			a.lanes.seen = map[string]laneSample{}
		}
		s = laneSample{at: time.Now(), queued: n}
		a.lanes.seen[subj] = s
	}
	return s.queued, s.queued >= uint64(a.cfg.MaxQueuedPerLane)
}
