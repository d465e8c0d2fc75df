package lifecycle

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/proto"
)

// A job of the endpoint API has its message, secrets and all, kept in
// proto.RequestBucket so that RunPod's /retry can run it again. The copy
// lives as long as the job can be retried, and no longer:
//
//   - Submit keeps it, beside the publish, with a TTL of the longest the
//     job may live (its policy.ttl, its execution timeout and the
//     retention of its record): a copy no sweeper removes still goes;
//   - every way a job ends (transition.lua's final) puts it in Redis's
//     kept index for when its record's retention ends, and the Sweeper
//     then removes the copy (sweepKept): a /runsync job's within its
//     minute, not a day later;
//   - Retry and Replay keep it again, for the new run's life.

// requestCopy is the message kept for a job's /retry and how long to keep
// it: from now until the job's record could still be read, at the
// latest.
func (c *Core) requestCopy(job *proto.Job) ([]byte, time.Duration, error) {
	job.V = proto.Version
	msg, err := json.Marshal(job)
	if err != nil {
		return nil, 0, fmt.Errorf("encode job %s: %w", job.ID, err)
	}
	ttl, retention := c.db.Lifespan(rdb.ParamsFor(job))
	return msg, ttl + time.Duration(job.Policy.ExecutionTimeout)*time.Millisecond + retention, nil
}

// keepRequest keeps the message of a job queued again (a retry, a
// replay) for the new run's life; a copy that cannot be kept is logged:
// the job runs, only its next /retry will say it cannot.
func (c *Core) keepRequest(ctx context.Context, job *proto.Job) {
	if !job.KeptForRetry() {
		return
	}
	msg, ttl, err := c.requestCopy(job)
	if err == nil {
		err = retryWithin(ctx, tryTimeout, func(ctx context.Context) error { return c.q.KeepRequest(ctx, job.ID, msg, ttl) })
	}
	if err != nil {
		c.log.Warn("keep job message for retry", zap.String("job_id", job.ID), zap.Error(err))
	}
}
