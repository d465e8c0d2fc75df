package proto

import (
	"encoding/json"
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
