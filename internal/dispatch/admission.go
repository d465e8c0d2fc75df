package dispatch

import (
	"context"
	"fmt"

	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Admission holds the optional parts of admission; a nil field is off.
type Admission struct {
	// Models refuses jobs whose models no live worker of their pool has.
	Models ModelChecker
	// Metrics counts admissions.
	Metrics *Metrics
}

// ModelChecker says why no worker can run a job, "" when one can.
type ModelChecker interface {
	Check(ctx context.Context, job *proto.Job, input *proto.Input) (reject string, err error)
}

// check runs the model check of a valid job: the message to fail it with,
// or an error to NAK the submission with.
func (a Admission) check(ctx context.Context, job *proto.Job, input *proto.Input) (string, error) {
	reject, err := a.Models.Check(ctx, job, input)
	if err != nil {
		return "", fmt.Errorf("check models: %w", err)
	}
	if reject != "" && a.Metrics != nil {
		a.Metrics.AdmissionFailures.Inc("no_models")
	}
	return reject, nil
}

// count counts an admission's outcome.
func (a Admission) count(job *proto.Job, out lifecycle.Admitted) {
	if a.Metrics == nil || job == nil {
		return
	}
	switch out {
	case lifecycle.Queued:
		a.Metrics.Admitted.Inc(job.Pool, string(job.Lane))
	case lifecycle.Duplicate:
		a.Metrics.Duplicates.Inc()
	}
}
