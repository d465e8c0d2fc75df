package rdb

import (
	"errors"
	"fmt"
	"time"

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
	// ErrExpired: Claim found the job still queued past its policy.ttl
	// and timed it out instead.
	ErrExpired = errors.New("job expired in the queue")
	// ErrHeld: Claim found the job held by a live lease of its current
	// attempt; the delivery in hand is a duplicate, or came back early.
	ErrHeld = errors.New("job is held by a live lease")
	// ErrLeaseLost: the caller's lease is gone (the sweeper handed the job
	// to another worker, or another attempt took it over).
	ErrLeaseLost = errors.New("lease lost")
	// ErrExhausted: Requeue logged the attempt's failure and it was the
	// last one; the caller finishes the job instead.
	ErrExhausted = errors.New("attempts used up")
	// ErrNotDue: Expire found the job's TTL not yet run out (a retry
	// re-armed it).
	ErrNotDue = errors.New("job TTL not yet due")
)

// NotReplicatedError is a transition that fewer replicas than
// Options.WaitReplicas confirmed within the wait timeout: the master has
// it, and a failover now may lose it. The caller treats it as Redis being
// away (a later try of the same transition finds it done, or does it on
// the new master).
type NotReplicatedError struct {
	Want, Got int
	Within    time.Duration
}

func (e *NotReplicatedError) Error() string {
	return fmt.Sprintf("%d of the %d replicas REDIS_WAIT_REPLICAS asks for confirmed the write within %v", e.Got, e.Want, e.Within)
}

// TransitionError is a refused transition. It wraps one of the sentinels
// above. The operation that returns it also returns the current record.
type TransitionError struct {
	Op      string       // the operation: "claim", "finish", …
	ID      string       // the job id
	From    proto.Status // the record's status
	Attempt int          // the caller's attempt for fenced operations, else 0
	Current int          // the record's attempt
	Err     error
}

func (e *TransitionError) Error() string {
	msg := fmt.Sprintf("%s job %s (%s): %v", e.Op, e.ID, e.From, e.Err)
	if errors.Is(e.Err, ErrStale) {
		msg += fmt.Sprintf(" (caller has attempt %d, the record has attempt %d)", e.Attempt, e.Current)
	}
	return msg
}

func (e *TransitionError) Unwrap() error { return e.Err }

// HeldError is ErrHeld with the time left on the holder's lease.
type HeldError struct {
	ID   string
	Left time.Duration
}

func (e *HeldError) Error() string {
	return fmt.Sprintf("claim job %s: %v for %v more", e.ID, ErrHeld, e.Left)
}

func (e *HeldError) Unwrap() error { return ErrHeld }

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
