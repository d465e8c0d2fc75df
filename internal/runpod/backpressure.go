package runpod

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
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
		n, err := laneQueued(ctx, a.q.JetStream(), subj)
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

// laneQueued counts the jobs on a lane's subject that no worker holds.
func laneQueued(ctx context.Context, js jetstream.JetStream, subj string) (uint64, error) {
	s, err := js.Stream(ctx, proto.JobsStream)
	if err != nil {
		return 0, fmt.Errorf("lane depth: %w", err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(subj))
	if err != nil {
		return 0, fmt.Errorf("lane depth: %w", err)
	}
	total := info.State.Subjects[subj]
	var held uint64
	lister := s.ListConsumers(ctx)
	for ci := range lister.Info() {
		if ci.Config.FilterSubject == subj {
			held += uint64(ci.NumAckPending)
		}
	}
	if err := lister.Err(); err != nil {
		return 0, fmt.Errorf("lane depth: %w", err)
	}
	return total - min(held, total), nil
}
