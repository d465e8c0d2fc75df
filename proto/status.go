package proto

import (
	"encoding/json"
	"fmt"
	"time"
)

// Status is a job's state, in RunPod's vocabulary. Only these six exist.
type Status string

// The statuses.
const (
	StatusInQueue    Status = "IN_QUEUE"
	StatusInProgress Status = "IN_PROGRESS"
	StatusCompleted  Status = "COMPLETED"
	StatusFailed     Status = "FAILED"
	StatusCancelled  Status = "CANCELLED"
	StatusTimedOut   Status = "TIMED_OUT"
)

// Terminal reports whether s is a final state.
func (s Status) Terminal() bool {
	switch s {
	case StatusCompleted, StatusFailed, StatusCancelled, StatusTimedOut:
		return true
	}
	return false
}

// Valid reports whether s is one of the six statuses.
func (s Status) Valid() bool {
	return s == StatusInQueue || s == StatusInProgress || s.Terminal()
}

// Record is a job's status record: the Redis hash at [JobKey]. Field tags
// are the hash's field names. Times are Unix milliseconds in Redis.
//
// Attempt fences writers: a worker that claims the job gets the next attempt
// number, and every later write it makes names that number; a write that
// names an older attempt is refused.
type Record struct {
	ID       string `redis:"id"`
	Status   Status `redis:"status"`
	Attempt  int    `redis:"attempt"`
	Retries  int    `redis:"retries"`
	WorkerID string `redis:"worker_id"`
	Pool     string `redis:"pool"`
	Lane     Lane   `redis:"lane"`
	Source   string `redis:"source"`
	Tenant   string `redis:"tenant"`
	BatchID  string `redis:"batch_id"`

	SubmittedAt time.Time `redis:"submitted_at"`
	StartedAt   time.Time `redis:"started_at"`
	FinishedAt  time.Time `redis:"finished_at"`

	// Output is the job's output JSON ([Output] on success; may be set on
	// failure too, e.g. {"details": [...]}). It never holds file bytes:
	// files are referenced by blob key or URL.
	Output json.RawMessage `redis:"output"`
	// Error is the failure message of a FAILED or TIMED_OUT job.
	Error string `redis:"error"`
	// Webhook is how the delivery of the job's webhook ended, once it
	// ended; nil while it runs or when the job has none. Redis holds it
	// as JSON.
	Webhook *WebhookOutcome `redis:"webhook"`
}

// WebhookOutcome is how the delivery of a job's terminal status to its
// webhook ended: what /status answers as its "webhook" field.
type WebhookOutcome struct {
	// Delivered is true when the receiver answered 2xx.
	Delivered bool `json:"delivered"`
	// Attempts is how many POSTs were made (1 for a delivery that worked
	// at once).
	Attempts int `json:"attempts"`
	// LastStatus is the HTTP status of the last answer; 0 when the last
	// try got none (timed out, refused connection, refused by the SSRF
	// guard).
	LastStatus int `json:"lastStatus,omitempty"`
	// Error says why the last try failed; empty when delivered. It never
	// holds what the receiver sent.
	Error string `json:"error,omitempty"`
}

// String reads like "delivered (1 attempt, HTTP 200)" or "failed after 3
// attempts: answered 503 Service Unavailable", for a person.
func (o *WebhookOutcome) String() string {
	if o == nil {
		return ""
	}
	tries := fmt.Sprintf("%d attempts", o.Attempts)
	if o.Attempts == 1 {
		tries = "1 attempt"
	}
	if o.Delivered {
		if o.LastStatus != 0 {
			return fmt.Sprintf("delivered (%s, HTTP %d)", tries, o.LastStatus)
		}
		return fmt.Sprintf("delivered (%s)", tries)
	}
	msg := "failed after " + tries
	if o.Error != "" {
		msg += ": " + o.Error
	} else if o.LastStatus != 0 {
		msg += fmt.Sprintf(": HTTP %d", o.LastStatus)
	}
	return msg
}

// DelayTime is the time from submission to pickup (RunPod's delayTime).
func (r *Record) DelayTime() time.Duration {
	if r.StartedAt.IsZero() || r.SubmittedAt.IsZero() {
		return 0
	}
	// Never negative, even when the submission's clock was ahead.
	return max(r.StartedAt.Sub(r.SubmittedAt), 0)
}

// ExecutionTime is the time from pickup to the end (RunPod's executionTime).
func (r *Record) ExecutionTime() time.Duration {
	if r.FinishedAt.IsZero() || r.StartedAt.IsZero() {
		return 0
	}
	return max(r.FinishedAt.Sub(r.StartedAt), 0)
}
