package dispatch

import (
	"context"
	"fmt"

	"github.com/comfyfleet/comfyfleet/proto"
)

// Admission holds the optional parts of admission; a nil field is off.
// Set it with SetAdmission before Start.
type Admission struct {
	// Webhooks records each job's webhook URL for the deliverer.
	Webhooks WebhookRecorder
	// Models refuses jobs whose models no live worker of their pool has.
	Models ModelChecker
	// Metrics counts admissions.
	Metrics *Metrics
}

// ModelChecker says why no worker can run a job, "" when one can.
type ModelChecker interface {
	Check(ctx context.Context, job *proto.Job, input *proto.Input) (reject string, err error)
}

// SetAdmission sets the optional parts of admission; call it before Start.
func (d *Dispatcher) SetAdmission(a Admission) { d.adm = a }

// admitting runs the optional checks of a valid job before it is
// recorded: it returns the message to fail the job with, or an error to
// NAK the submission with.
func (a Admission) admitting(ctx context.Context, job *proto.Job, input *proto.Input) (string, error) {
	if a.Webhooks != nil && job.Webhook != "" {
		if err := a.Webhooks.Put(ctx, job.ID, job.Webhook); err != nil {
			return "", fmt.Errorf("admit job %s: %w", job.ID, err)
		}
	}
	if a.Models != nil {
		reject, err := a.Models.Check(ctx, job, input)
		if err != nil {
			return "", fmt.Errorf("admit job %s: %w", job.ID, err)
		}
		if reject != "" {
			if a.Metrics != nil {
				a.Metrics.AdmissionFailures.Inc("no_models")
			}
			return reject, nil
		}
	}
	return "", nil
}

// admitted counts an admitted job.
func (a Admission) admitted(job *proto.Job) {
	if a.Metrics != nil {
		a.Metrics.Admitted.Inc(job.Pool, string(job.Lane))
	}
}
