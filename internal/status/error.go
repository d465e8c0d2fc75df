package status

import (
	"errors"
	"fmt"

	"github.com/comfyfleet/comfyfleet/proto"
)

// Sentinel errors; check with errors.Is.
var (
	// ErrNotFound: the job has no record, or its record expired.
	ErrNotFound = errors.New("job status not found")
	// ErrStale: the caller's attempt no longer holds the job (another
	// attempt claimed it, or this one gave it back).
	ErrStale = errors.New("stale attempt")
	// ErrTerminal: the record is in a terminal state, which only Retry
	// leaves.
	ErrTerminal = errors.New("job is in a terminal state")
	// ErrIllegal: the operation does not apply to the record's status.
	ErrIllegal = errors.New("illegal status transition")
	// ErrCorrupt: the hash cannot be read as a status record.
	ErrCorrupt = errors.New("corrupt status record")
)

// TransitionError is a refused transition. It wraps ErrStale, ErrTerminal
// or ErrIllegal. The operation that returns it also returns the current
// record.
type TransitionError struct {
	Op      string       // the operation: "claim", "finish", …
	ID      string       // the job id
	From    proto.Status // the record's status
	To      proto.Status // the status the operation would have set
	Attempt int          // the caller's attempt for fenced operations, else 0
	Current int          // the record's attempt
	Err     error        // ErrStale, ErrTerminal or ErrIllegal
}

func (e *TransitionError) Error() string {
	msg := fmt.Sprintf("%s job %s: %s -> %s refused: %v", e.Op, e.ID, e.From, e.To, e.Err)
	if errors.Is(e.Err, ErrStale) {
		msg += fmt.Sprintf(" (caller has attempt %d, the record has attempt %d)", e.Attempt, e.Current)
	}
	return msg
}

func (e *TransitionError) Unwrap() error { return e.Err }

// CorruptError says which field of a record cannot be read. It wraps
// ErrCorrupt.
type CorruptError struct {
	Key    string // the Redis key
	Field  string // the hash field
	Value  string // its value, shortened to 64 bytes
	Reason string // what is wrong with it
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("%v %s: field %s: %q %s", ErrCorrupt, e.Key, e.Field, e.Value, e.Reason)
}

func (e *CorruptError) Unwrap() error { return ErrCorrupt }
