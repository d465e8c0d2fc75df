package status

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfyfleet/comfyfleet/proto"
)

// Defaults of [Options] and [CreateParams].
const (
	// DefaultRetention is how long a terminal record is kept: RunPod's
	// retention of /run results.
	DefaultRetention = 30 * time.Minute
	// DefaultTTL is RunPod's default policy.ttl, a job's whole lifespan.
	DefaultTTL = 24 * time.Hour
	// TTLSlack is added to a job's TTL to get the expiry of its record while
	// it is not terminal, so that whoever enforces the TTL still finds the
	// record and can mark it TIMED_OUT.
	TTLSlack = time.Hour
)

//go:embed transition.lua
var transitionLua string

// transition is the one script that makes every change; see transition.lua.
var transition = redis.NewScript(transitionLua)

// Operations, as the script names them.
const (
	opCreate  = "create"
	opReject  = "reject"
	opClaim   = "claim"
	opRequeue = "requeue"
	opFinish  = "finish"
	opExpire  = "expire"
	opCancel  = "cancel"
	opRetry   = "retry"
)

// Clock tells the time; tests move it by hand.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Options configure a [Store]. The zero value is the production setup.
type Options struct {
	// Prefix goes in front of every key: "" in production, a per-test
	// prefix in tests.
	Prefix string
	// Retention is how long a terminal record is kept when the job names
	// none; zero means DefaultRetention.
	Retention time.Duration
	// QueueTTL is the expiry of a record that is not terminal when the job
	// has no TTL of its own; zero means DefaultTTL + TTLSlack.
	QueueTTL time.Duration
	// Clock gives "now" for every timestamp; nil means the system clock.
	Clock Clock
}

// Validate reports the first setting that cannot be used.
func (o Options) Validate() error {
	if o.Retention < 0 {
		return fmt.Errorf("status retention %v is negative", o.Retention)
	}
	if o.QueueTTL < 0 {
		return fmt.Errorf("status queue TTL %v is negative", o.QueueTTL)
	}
	return nil
}

// Store reads and changes job status records. It is safe for concurrent
// use.
type Store struct {
	rdb       redis.UniversalClient
	prefix    string
	retention time.Duration
	queueTTL  time.Duration
	clock     Clock
}

// NewStore returns a store on rdb. Settings that Validate refuses are
// replaced by their defaults.
func NewStore(rdb redis.UniversalClient, opts Options) *Store {
	s := &Store{
		rdb:       rdb,
		prefix:    opts.Prefix,
		retention: opts.Retention,
		queueTTL:  opts.QueueTTL,
		clock:     opts.Clock,
	}
	if s.retention <= 0 {
		s.retention = DefaultRetention
	}
	if s.queueTTL <= 0 {
		s.queueTTL = DefaultTTL + TTLSlack
	}
	if s.clock == nil {
		s.clock = systemClock{}
	}
	return s
}

// Key is the Redis key of a job's record, prefix included.
func (s *Store) Key(id string) string { return s.prefix + proto.JobKey(id) }

// CreateParams describe a new record. They carry no secrets and nothing
// else is written to Redis.
type CreateParams struct {
	ID      string
	Pool    string
	Lane    proto.Lane
	Source  string
	BatchID string
	// SubmittedAt is when the job was accepted; zero means now.
	SubmittedAt time.Time
	// Retention is how long the terminal record is kept (RunPod: 30 min for
	// /run, 1 min for /runsync); zero means the store's default.
	Retention time.Duration
	// TTL is the job's policy.ttl; the record expires TTL+TTLSlack after
	// its last transition while it is not terminal. Zero means the store's
	// QueueTTL (which already includes slack).
	TTL time.Duration
}

// ParamsFor gives the CreateParams of an admitted job.
func ParamsFor(j *proto.Job) CreateParams {
	return CreateParams{
		ID:          j.ID,
		Pool:        j.Pool,
		Lane:        j.Lane,
		Source:      j.Source,
		BatchID:     j.BatchID,
		SubmittedAt: j.SubmittedAt,
		Retention:   time.Duration(j.Retention) * time.Millisecond,
		TTL:         time.Duration(j.Policy.TTL) * time.Millisecond,
	}
}

// Create makes an IN_QUEUE record unless the job has one. It is idempotent:
// when a record exists it returns that record unchanged and created=false.
func (s *Store) Create(ctx context.Context, p CreateParams) (rec *proto.Record, created bool, err error) {
	args, err := s.createArgs(p)
	if err != nil {
		return nil, false, fmt.Errorf("create job status: %w", err)
	}
	code, rec, err := s.run(ctx, opCreate, p.ID, args...)
	if err != nil {
		return nil, false, err
	}
	if code != "ok" && code != "exists" {
		return rec, false, fmt.Errorf("create job %s: unexpected script reply %q", p.ID, code)
	}
	return rec, code == "ok", nil
}

// Reject records a job that failed admission: it creates the record
// directly as FAILED with errMsg, or moves an existing record that is not
// terminal to FAILED. A terminal record is left alone (ErrTerminal).
func (s *Store) Reject(ctx context.Context, p CreateParams, errMsg string) (*proto.Record, error) {
	args, err := s.createArgs(p)
	if err != nil {
		return nil, fmt.Errorf("reject job: %w", err)
	}
	return s.change(ctx, opReject, p.ID, proto.StatusFailed, 0, append(args, errMsg)...)
}

func (s *Store) createArgs(p CreateParams) ([]any, error) {
	if err := proto.ValidID(p.ID); err != nil {
		return nil, err
	}
	if p.Lane != "" && !p.Lane.Valid() {
		return nil, fmt.Errorf("job %s: %q is not a lane", p.ID, p.Lane)
	}
	submitted := p.SubmittedAt
	if submitted.IsZero() {
		submitted = s.clock.Now()
	}
	retention := p.Retention
	if retention <= 0 {
		retention = s.retention
	}
	ttl := s.queueTTL
	if p.TTL > 0 {
		ttl = p.TTL + TTLSlack
	}
	return []any{p.Pool, string(p.Lane), p.Source, p.BatchID,
		submitted.UnixMilli(), millis(retention), millis(ttl)}, nil
}

// Claim gives the job to a worker: IN_QUEUE or IN_PROGRESS (a redelivery
// whose previous attempt never reported) becomes IN_PROGRESS with the next
// attempt number, the worker's id and started_at = now. A redelivery also
// counts as a retry. It returns the new attempt, which the worker names in
// Requeue and Finish. On a terminal record it returns ErrTerminal with the
// record, so the worker can ack and drop a cancelled job.
func (s *Store) Claim(ctx context.Context, id, workerID string) (attempt int, rec *proto.Record, err error) {
	rec, err = s.change(ctx, opClaim, id, proto.StatusInProgress, 0, workerID)
	if err != nil {
		return 0, rec, err
	}
	return rec.Attempt, rec, nil
}

// Requeue gives the job back to the queue (its ComfyUI died, the worker is
// shutting down): IN_PROGRESS becomes IN_QUEUE and retries grows by one, if
// attempt still holds the job; otherwise ErrStale. The reason is kept in the
// hash's requeue_reason field for operators.
func (s *Store) Requeue(ctx context.Context, id string, attempt int, reason string) (*proto.Record, error) {
	return s.change(ctx, opRequeue, id, proto.StatusInQueue, attempt, attempt, reason)
}

// Finish ends the attempt: IN_PROGRESS becomes COMPLETED, FAILED or
// TIMED_OUT with finished_at = now, the output and the error, and the
// record expires after the job's retention. attempt must be the record's
// attempt, else ErrStale and nothing changes; a record that went terminal
// meanwhile (a cancel) gives ErrTerminal. Finish is idempotent for its
// attempt: repeating a Finish that already landed (its reply was lost)
// succeeds, returns the record as first written and changes nothing.
func (s *Store) Finish(ctx context.Context, id string, attempt int, to proto.Status, output json.RawMessage, errMsg string) (*proto.Record, error) {
	if len(output) > 0 && !json.Valid(output) {
		return nil, fmt.Errorf("finish job %s: output is not valid JSON", id)
	}
	return s.change(ctx, opFinish, id, to, attempt, attempt, string(to), string(output), errMsg)
}

// Expire times out a job whose TTL passed before any worker picked it up:
// IN_QUEUE becomes TIMED_OUT with errMsg. IN_PROGRESS is ErrIllegal (a
// running job ends through Finish or Cancel).
func (s *Store) Expire(ctx context.Context, id, errMsg string) (*proto.Record, error) {
	return s.change(ctx, opExpire, id, proto.StatusTimedOut, 0, errMsg)
}

// Cancel cancels a job in any state that is not terminal; it is not fenced
// (an operator's action). A terminal record gives ErrTerminal with the
// record.
func (s *Store) Cancel(ctx context.Context, id string) (*proto.Record, error) {
	return s.change(ctx, opCancel, id, proto.StatusCancelled, 0)
}

// Retry queues a FAILED or TIMED_OUT job again, as RunPod's /retry does:
// same id, output, error, worker and times cleared, submitted_at = now,
// retries grows by one, and the record expires again as a queued one. The
// attempt number is kept, so the next Claim still fences out every earlier
// attempt. Any other status gives ErrIllegal.
//
// The job's attempt log (AttemptErrors) is emptied: the retried job gets
// its full number of attempts again.
func (s *Store) Retry(ctx context.Context, id string) (*proto.Record, error) {
	rec, err := s.change(ctx, opRetry, id, proto.StatusInQueue, 0)
	if err != nil {
		return rec, err
	}
	return rec, s.ClearAttempts(ctx, id)
}

// Get reads a job's record; ErrNotFound when it is missing or expired.
func (s *Store) Get(ctx context.Context, id string) (*proto.Record, error) {
	key := s.Key(id)
	h, err := s.rdb.HGetAll(ctx, key).Result()
	if err != nil {
		return nil, fmt.Errorf("get job %s: %w", id, err)
	}
	if len(h) == 0 {
		return nil, fmt.Errorf("get job %s: %w", id, ErrNotFound)
	}
	rec, err := s.decode(id, h)
	if err != nil {
		return nil, fmt.Errorf("get job %s: %w", id, err)
	}
	return rec, nil
}

// change runs a transition and turns a refusal into a *TransitionError
// that comes with the current record.
func (s *Store) change(ctx context.Context, op, id string, to proto.Status, attempt int, args ...any) (*proto.Record, error) {
	code, rec, err := s.run(ctx, op, id, args...)
	if err != nil {
		return nil, err
	}
	var sentinel error
	switch code {
	case "ok":
		return rec, nil
	case "stale":
		sentinel = ErrStale
	case "terminal":
		sentinel = ErrTerminal
	case "illegal":
		sentinel = ErrIllegal
	default:
		return rec, fmt.Errorf("%s job %s: unexpected script reply %q", op, id, code)
	}
	return rec, &TransitionError{Op: op, ID: id, From: rec.Status, To: to,
		Attempt: attempt, Current: rec.Attempt, Err: sentinel}
}

// run calls the script and decodes the record it returns.
func (s *Store) run(ctx context.Context, op, id string, args ...any) (string, *proto.Record, error) {
	key := s.Key(id)
	argv := append([]any{op, s.clock.Now().UnixMilli(), millis(s.retention), millis(s.queueTTL), id}, args...)
	vals, err := transition.Run(ctx, s.rdb, []string{key, s.countsKey()}, argv...).StringSlice()
	if err != nil {
		return "", nil, fmt.Errorf("%s job %s: %w", op, id, err)
	}
	if len(vals) == 0 || len(vals)%2 != 1 {
		return "", nil, fmt.Errorf("%s job %s: script reply has %d elements", op, id, len(vals))
	}
	code := vals[0]
	if code == "notfound" {
		return code, nil, fmt.Errorf("%s job %s: %w", op, id, ErrNotFound)
	}
	h := make(map[string]string, len(vals)/2)
	for i := 1; i+1 < len(vals); i += 2 {
		h[vals[i]] = vals[i+1]
	}
	rec, err := s.decode(id, h)
	if err == nil && code == "corrupt" {
		// The script and decodeRecord read the same fields the same way;
		// this is a safety net should they ever disagree.
		err = fmt.Errorf("%w %s: the transition script refuses it", ErrCorrupt, key)
	}
	if err != nil {
		return code, nil, fmt.Errorf("%s job %s: %w", op, id, err)
	}
	return code, rec, nil
}

func (s *Store) decode(id string, h map[string]string) (*proto.Record, error) {
	key := s.Key(id)
	rec, err := decodeRecord(key, h)
	if err != nil {
		return nil, err
	}
	if rec.ID != id {
		return nil, &CorruptError{Key: key, Field: "id", Value: rec.ID, Reason: "does not match the key"}
	}
	return rec, nil
}

// millis is d in whole milliseconds, at least 1: PEXPIRE 0 would delete.
func millis(d time.Duration) int64 {
	return max(1, d.Milliseconds())
}

// CountRetried is the Counts key of jobs sent back by Retry.
const CountRetried = "RETRIED"

func (s *Store) countsKey() string { return s.prefix + "cf:stats" }

// Counts returns how many jobs reached each terminal status, and how many
// were retried (CountRetried), since the counters began.
func (s *Store) Counts(ctx context.Context) (map[proto.Status]int64, error) {
	h, err := s.rdb.HGetAll(ctx, s.countsKey()).Result()
	if err != nil {
		return nil, fmt.Errorf("read job counts: %w", err)
	}
	out := make(map[proto.Status]int64, len(h))
	for k, v := range h {
		n, ok := parseCount(v)
		if !ok {
			return nil, &CorruptError{Key: s.countsKey(), Field: k, Value: v, Reason: "is not a count"}
		}
		out[proto.Status(k)] = n
	}
	return out, nil
}
