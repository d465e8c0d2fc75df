package rdb

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfyfleet/comfyfleet/proto"
)

//go:embed transition.lua
var transitionLua string

// transition is the one script that changes a job's state; see
// transition.lua.
var transition = redis.NewScript(transitionLua)

// CreateParams describe a new record. They carry no secrets and nothing
// else is written to Redis.
type CreateParams struct {
	ID     string
	Pool   string
	Lane   proto.Lane
	Source string
	// Tenant owns the job; "" means proto.DefaultTenant.
	Tenant  string
	BatchID string
	// Retention is how long the terminal record is kept (RunPod: 30 min for
	// /run, 1 min for /runsync); zero means the DB's default.
	Retention time.Duration
	// TTL is the job's policy.ttl, its whole lifespan from submission;
	// zero means the DB's default.
	TTL time.Duration
	// Kept says that a copy of the job message is kept for /retry
	// (proto.RequestBucket): when the record ends, the job goes into the
	// kept index (proto.KeptKey) for when its retention ends, and a
	// sweeper then removes the copy (DueKept).
	Kept bool
}

// ParamsFor gives the CreateParams of a job.
func ParamsFor(j *proto.Job) CreateParams {
	return CreateParams{
		ID:        j.ID,
		Pool:      j.Pool,
		Lane:      j.Lane,
		Source:    j.Source,
		Tenant:    j.Tenant,
		BatchID:   j.BatchID,
		Retention: proto.Millis(j.Retention),
		TTL:       proto.Millis(j.Policy.TTL),
		Kept:      j.KeptForRetry(),
	}
}

// Lifespan is how long a job of p may live, by this DB's defaults: its
// policy.ttl (from submission) and the retention of its terminal record.
func (db *DB) Lifespan(p CreateParams) (ttl, retention time.Duration) {
	ttl, retention = p.TTL, p.Retention
	if ttl <= 0 {
		ttl = db.ttl
	}
	if retention <= 0 {
		retention = db.retention
	}
	return ttl, retention
}

func (db *DB) createArgs(p CreateParams) ([]any, error) {
	if err := proto.ValidID(p.ID); err != nil {
		return nil, err
	}
	if p.Lane != "" && !p.Lane.Valid() {
		return nil, fmt.Errorf("job %s: %q is not a lane", p.ID, p.Lane)
	}
	if p.Tenant != "" {
		if err := proto.ValidID(p.Tenant); err != nil {
			return nil, fmt.Errorf("job %s: tenant: %w", p.ID, err)
		}
	}
	ttl, retention := db.Lifespan(p)
	return []any{p.Pool, string(p.Lane), p.Source, p.BatchID, millis(retention), millis(ttl)}, nil
}

func tenantArg(t string) string {
	if t == "" {
		return proto.DefaultTenant
	}
	return t
}

// Admission is what Admit found.
type Admission int

// The outcomes of Admit.
const (
	// Created: the job had no record; it has an IN_QUEUE one now.
	Created Admission = iota
	// Same: the record was made by this very submission (a redelivery, or
	// the adapter recorded the job before the dispatcher read it).
	Same
	// Exists: another submission made the job's record; this one changed
	// nothing (counted as DUPLICATE).
	Exists
	// Rejected: the record is FAILED with the reject reason.
	Rejected
)

// Admit records a submission: intake names the submission (its sequence
// in the intake stream) so that its redelivery is told apart from another
// submission of the same id. A new job's record is made IN_QUEUE, and put
// in the TTL index, or FAILED right away when reject is not empty. For an
// existing record it changes nothing, except that the submission that
// made the record may still reject the job while it is queued and has
// never run.
func (db *DB) Admit(ctx context.Context, intake string, p CreateParams, reject string) (Admission, *proto.Record, error) {
	args, err := db.createArgs(p)
	if err != nil {
		return 0, nil, fmt.Errorf("admit job: %w", err)
	}
	r, err := db.run(ctx, "admit", p.ID, append(append([]any{intake}, args...), reject, 0, 0, tenantArg(p.Tenant), boolArg(p.Kept))...)
	if err != nil {
		return 0, nil, err
	}
	switch r.code {
	case "created":
		return Created, r.rec, nil
	case "same":
		return Same, r.rec, nil
	case "exists":
		return Exists, r.rec, nil
	case "rejected":
		return Rejected, r.rec, nil
	}
	return 0, r.rec, r.unexpected()
}

// Create makes an IN_QUEUE record unless the job has one, and reports
// whether it did. It is for records made outside admission: a batch item
// cancelled before the dispatcher read it, and a job message whose record
// was lost (recreated true: counted as RECREATED). submitted is the
// submission time to record; zero means now.
func (db *DB) Create(ctx context.Context, p CreateParams, submitted time.Time, recreated bool) (*proto.Record, bool, error) {
	args, err := db.createArgs(p)
	if err != nil {
		return nil, false, fmt.Errorf("create job record: %w", err)
	}
	var sub int64
	if !submitted.IsZero() {
		sub = submitted.UnixMilli()
	}
	r, err := db.run(ctx, "create", p.ID, append(append([]any{""}, args...), "", sub, boolArg(recreated), tenantArg(p.Tenant), boolArg(p.Kept))...)
	if err != nil {
		return nil, false, err
	}
	switch r.code {
	case "created":
		return r.rec, true, nil
	case "exists":
		return r.rec, false, nil
	}
	return r.rec, false, r.unexpected()
}

// Lease is a hold on a running job: the attempt that holds it, the
// worker, and the ack subject of the job message's delivery, so that
// whoever settles the job (the worker, another adapter replica, the
// sweeper) can ack or NAK that delivery.
type Lease struct {
	JobID   string
	Attempt int
	// WorkerID is the fleet's id of the holder.
	WorkerID string
	// Taker is the name the holder used when it took the job (a RunPod
	// worker's name in its URLs); "" for gpuworkers.
	Taker string
	// Reply is the delivery's ack subject.
	Reply string
	// Deadline is the end of the job's execution timeout, by Redis's
	// clock; zero when it has none.
	Deadline time.Time
	// TTL is how long the lease lasts without a renewal.
	TTL time.Duration
}

// ClaimParams describe a claim.
type ClaimParams struct {
	ID       string
	WorkerID string
	Taker    string
	Reply    string
	// LeaseTTL is how long the lease lasts without a renewal; required.
	LeaseTTL time.Duration
	// ExecTimeout, when set, gives the lease a deadline: a job whose holder
	// went silent past it plus a grace ends TIMED_OUT.
	ExecTimeout time.Duration
}

// Claimed is a successful claim.
type Claimed struct {
	Lease  Lease
	Record *proto.Record
	// Failures is how many earlier attempts failed (the attempt log).
	Failures int
}

// Claim gives the job to a worker: IN_QUEUE, or IN_PROGRESS whose lease
// lapsed (a redelivery whose holder died), becomes IN_PROGRESS with the
// next attempt number and a lease. A redelivery counts as a retry. It
// fails with ErrNotFound (no record), ErrTerminal (with the record: the
// delivery is left over; TransitionError's record tells whether a dead
// letter is still owed, see DeadLetterOwed), ErrExpired (the TTL ran out:
// the record is TIMED_OUT now) or a *HeldError (a live lease holds it).
func (db *DB) Claim(ctx context.Context, p ClaimParams) (*Claimed, error) {
	if p.LeaseTTL <= 0 {
		return nil, fmt.Errorf("claim job %s: the lease TTL must be positive", p.ID)
	}
	r, err := db.run(ctx, "claim", p.ID, p.WorkerID, p.Taker, p.Reply, millis(p.LeaseTTL), p.ExecTimeout.Milliseconds(), proto.MsgTTLExpired)
	if err != nil {
		return nil, err
	}
	switch r.code {
	case "ok":
		l := Lease{JobID: p.ID, Attempt: r.rec.Attempt, WorkerID: p.WorkerID, Taker: p.Taker, Reply: p.Reply, TTL: p.LeaseTTL}
		if ms, _ := strconv.ParseInt(r.extra["deadline"], 10, 64); ms > 0 {
			l.Deadline = time.UnixMilli(ms)
		}
		return &Claimed{Lease: l, Record: r.rec, Failures: int(r.n)}, nil
	case "held":
		return nil, &HeldError{ID: p.ID, Left: time.Duration(r.n) * time.Millisecond}
	case "expired":
		return nil, r.refused(ErrExpired, 0)
	}
	return nil, r.refusal(0)
}

// Renew extends the lease of attempt by ttl from now. A lapsed lease that
// nobody took yet is renewed too. ErrLeaseLost: the job went to another
// attempt or back to the queue; ErrTerminal: the job ended while this
// attempt held it (a cancel).
func (db *DB) Renew(ctx context.Context, id string, attempt int, ttl time.Duration) error {
	r, err := db.run(ctx, "renew", id, attempt, millis(ttl))
	if err != nil {
		return err
	}
	switch r.code {
	case "ok":
		return nil
	case "terminal":
		return fmt.Errorf("renew lease of job %s: %w", id, ErrTerminal)
	case "lost", "notfound":
		return fmt.Errorf("renew lease of job %s: %w", id, ErrLeaseLost)
	}
	return r.unexpected()
}

// Requeue gives the job back to the queue: IN_PROGRESS becomes IN_QUEUE,
// retries grows by one and the lease ends, if attempt still holds the job
// (else ErrStale or ErrTerminal). The reason is kept in the record's
// requeue_reason field. When counted, the reason also goes to the attempt
// log, and if that makes maxAttempts failures (maxAttempts > 0) nothing is
// requeued: ErrExhausted, and the caller finishes the job. It returns the
// number of failed attempts.
func (db *DB) Requeue(ctx context.Context, id string, attempt int, reason string, counted bool, maxAttempts int) (int, *proto.Record, error) {
	r, err := db.run(ctx, "requeue", id, attempt, reason, boolArg(counted), maxAttempts, millis(AttemptsKeep))
	if err != nil {
		return 0, nil, err
	}
	switch r.code {
	case "ok":
		return int(r.n), r.rec, nil
	case "exhausted":
		return int(r.n), r.rec, r.refused(ErrExhausted, attempt)
	}
	return 0, r.rec, r.refusal(attempt)
}

// Finish ends the attempt: IN_PROGRESS becomes COMPLETED, FAILED or
// TIMED_OUT with the output and the error, the lease ends and the record
// expires after the job's retention. deadLetter records that a dead letter
// is owed for this ending (see DeadLettered). attempt must hold the job,
// else ErrStale; a record that went terminal meanwhile (a cancel) gives
// ErrTerminal. Finish is idempotent for its attempt: repeating a Finish
// that landed (its reply was lost) succeeds and changes nothing.
func (db *DB) Finish(ctx context.Context, id string, attempt int, to proto.Status, output json.RawMessage, errMsg string, deadLetter bool) (*proto.Record, error) {
	if len(output) > 0 && !json.Valid(output) {
		return nil, fmt.Errorf("finish job %s: output is not valid JSON", id)
	}
	r, err := db.run(ctx, "finish", id, attempt, string(to), string(output), errMsg, boolArg(deadLetter))
	if err != nil {
		return nil, err
	}
	if r.code == "ok" {
		return r.rec, nil
	}
	return r.rec, r.refusal(attempt)
}

// DeadLettered records that the dead letter owed for attempt's ending is
// durable in the dead-letter stream.
func (db *DB) DeadLettered(ctx context.Context, id string, attempt int) error {
	r, err := db.run(ctx, "deadlettered", id, attempt)
	if err != nil {
		return err
	}
	if r.code != "ok" && r.code != "notfound" {
		return r.unexpected()
	}
	return nil
}

// Release ends attempt's lease on a job that ended elsewhere (a cancel),
// once its delivery was settled.
func (db *DB) Release(ctx context.Context, id string, attempt int) error {
	r, err := db.run(ctx, "release", id, attempt)
	if err != nil {
		return err
	}
	if r.code != "ok" && r.code != "notfound" {
		return r.unexpected()
	}
	return nil
}

// Expire times out a job of the TTL index whose policy.ttl ran out while
// it waited: IN_QUEUE becomes TIMED_OUT (proto.MsgTTLExpired). ErrNotDue
// when it is not yet due (it stays indexed at its new deadline);
// ErrIllegal (running) and ErrTerminal leave the record and take the job
// out of the index, as does ErrNotFound.
func (db *DB) Expire(ctx context.Context, id string) (*proto.Record, error) {
	r, err := db.run(ctx, "expire", id, proto.MsgTTLExpired)
	if err != nil {
		return nil, err
	}
	switch r.code {
	case "ok":
		return r.rec, nil
	case "notdue":
		return r.rec, r.refused(ErrNotDue, 0)
	}
	return r.rec, r.refusal(0)
}

// Cancel cancels a job in any state that is not terminal; it is not fenced
// (an operator's action). running reports whether it was IN_PROGRESS. A
// terminal record gives ErrTerminal with the record.
func (db *DB) Cancel(ctx context.Context, id string) (rec *proto.Record, running bool, err error) {
	r, err := db.run(ctx, "cancel", id)
	if err != nil {
		return nil, false, err
	}
	if r.code == "ok" {
		return r.rec, r.n == 1, nil
	}
	return r.rec, false, r.refusal(0)
}

// CancelQueued cancels a job only while it waits in the queue, as RunPod's
// /purge-queue does: IN_QUEUE becomes CANCELLED, IN_PROGRESS gives
// ErrIllegal (a running job continues), a terminal record ErrTerminal. The
// check and the change are one step, so a job a worker claims at the same
// moment either runs or is cancelled before it starts.
func (db *DB) CancelQueued(ctx context.Context, id string) (*proto.Record, error) {
	r, err := db.run(ctx, "cancelqueued", id)
	if err != nil {
		return nil, err
	}
	if r.code == "ok" {
		return r.rec, nil
	}
	return r.rec, r.refusal(0)
}

// Fail fails a queued job that cannot run after all (its retry could not
// be published), if the record still has the attempt the caller saw and
// waits IN_QUEUE; else ErrStale or ErrTerminal.
func (db *DB) Fail(ctx context.Context, id string, attempt int, errMsg string) (*proto.Record, error) {
	r, err := db.run(ctx, "fail", id, attempt, errMsg)
	if err != nil {
		return nil, err
	}
	if r.code == "ok" {
		return r.rec, nil
	}
	return r.rec, r.refusal(attempt)
}

// Retry queues a FAILED or TIMED_OUT job again, as RunPod's /retry does:
// output, error, worker and times cleared, submitted_at = now, retries
// grows by one, the attempt log is emptied (it gets its full attempts
// again) and the TTL counts from now. The attempt number is kept, so the
// next claim still fences out every earlier attempt. Any other status
// gives ErrIllegal.
func (db *DB) Retry(ctx context.Context, id string) (*proto.Record, error) {
	r, err := db.run(ctx, "retry", id)
	if err != nil {
		return nil, err
	}
	if r.code == "ok" {
		return r.rec, nil
	}
	return r.rec, r.refusal(0)
}

// Get reads a job's record; ErrNotFound when it is missing or expired.
func (db *DB) Get(ctx context.Context, id string) (*proto.Record, error) {
	key := db.key(proto.JobKey(id))
	h, err := db.rdb.HGetAll(ctx, key).Result()
	if err != nil {
		return nil, fmt.Errorf("get job %s: %w", id, err)
	}
	if len(h) == 0 {
		return nil, fmt.Errorf("get job %s: %w", id, ErrNotFound)
	}
	rec, err := db.decode(id, h)
	if err != nil {
		return nil, fmt.Errorf("get job %s: %w", id, err)
	}
	return rec, nil
}

// DeadLetterOwed reports whether a refused Claim's record (ErrTerminal)
// still owes its dead letter, which the holder of the delivery writes.
func DeadLetterOwed(err error) bool {
	te, ok := err.(interface{ deadLetterOwed() bool })
	return ok && te.deadLetterOwed()
}

// AttemptErrors returns the job's attempt log, oldest first.
func (db *DB) AttemptErrors(ctx context.Context, id string) ([]string, error) {
	v, err := db.rdb.LRange(ctx, db.key(proto.AttemptsKey(id)), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("read attempts of job %s: %w", id, err)
	}
	return v, nil
}

// Lease reads a job's lease; ErrLeaseLost when it has none.
func (db *DB) Lease(ctx context.Context, id string) (*Lease, error) {
	h, err := db.rdb.HGetAll(ctx, db.key(proto.LeaseKey(id))).Result()
	if err != nil {
		return nil, fmt.Errorf("read lease of job %s: %w", id, err)
	}
	if len(h) == 0 {
		return nil, fmt.Errorf("read lease of job %s: %w", id, ErrLeaseLost)
	}
	l, err := decodeLease(id, h)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// Held lists the jobs leased to a worker.
func (db *DB) Held(ctx context.Context, workerID string) ([]string, error) {
	ids, err := db.rdb.SMembers(ctx, db.key(proto.HeldKey(workerID))).Result()
	if err != nil {
		return nil, fmt.Errorf("list jobs of worker %s: %w", workerID, err)
	}
	return ids, nil
}

func decodeLease(id string, h map[string]string) (*Lease, error) {
	attempt, err := strconv.Atoi(h["attempt"])
	if err != nil {
		return nil, &CorruptError{Key: proto.LeaseKey(id), Field: "attempt", Value: h["attempt"], Reason: "is not a number"}
	}
	l := &Lease{JobID: id, Attempt: attempt, WorkerID: h["worker_id"], Taker: h["taker"], Reply: h["reply"]}
	if ms, _ := strconv.ParseInt(h["deadline"], 10, 64); ms > 0 {
		l.Deadline = time.UnixMilli(ms)
	}
	if ms, _ := strconv.ParseInt(h["lease_ms"], 10, 64); ms > 0 {
		l.TTL = time.Duration(ms) * time.Millisecond
	}
	return l, nil
}

// result is a decoded reply of the transition script.
type result struct {
	op, id string
	code   string
	n      int64
	rec    *proto.Record
	raw    map[string]string // the record's hash
	extra  map[string]string // the fields after the separator
}

// run calls the script and decodes its reply.
func (db *DB) run(ctx context.Context, op, id string, args ...any) (*result, error) {
	keys := []string{
		db.key(proto.JobKey(id)), db.key(proto.StatsKey), db.key(proto.LeaseKey(id)),
		db.key(proto.LeasesKey), db.key(proto.TTLKey), db.key(proto.AttemptsKey(id)),
		db.key(proto.KeptKey), db.key(proto.RecentKey), db.key(proto.RateKey("")),
		db.key(proto.PoolStatsKey("")), db.key(proto.ActiveKeyPrefix),
	}
	argv := append([]any{op, id, db.key(proto.HeldKey(""))}, args...)
	vals, err := db.eval(ctx, keys, argv)
	if err != nil {
		return nil, fmt.Errorf("%s job %s: %w", op, id, err)
	}
	if len(vals) < 2 {
		return nil, fmt.Errorf("%s job %s: script reply has %d elements", op, id, len(vals))
	}
	r := &result{op: op, id: id, raw: map[string]string{}}
	r.code, _ = vals[0].(string)
	r.n, _ = vals[1].(int64)
	fields := r.raw
	for i := 2; i < len(vals); i++ {
		k, _ := vals[i].(string)
		if k == "" && fields != nil && r.extra == nil {
			r.extra = map[string]string{}
			fields = r.extra
			continue
		}
		if i+1 >= len(vals) {
			return nil, fmt.Errorf("%s job %s: script reply has an odd field list", op, id)
		}
		v, _ := vals[i+1].(string)
		fields[k] = v
		i++
	}
	if r.code == "notfound" {
		return r, nil
	}
	if len(r.raw) == 0 {
		return r, nil // renew and reclaim's short replies
	}
	rec, err := db.decode(id, r.raw)
	if err == nil && r.code == "corrupt" {
		// The script and decodeRecord read the same fields the same way;
		// this is a safety net should they ever disagree.
		err = fmt.Errorf("%w %s: the transition script refuses it", ErrCorrupt, db.key(proto.JobKey(id)))
	}
	if err != nil {
		return nil, fmt.Errorf("%s job %s: %w", op, id, err)
	}
	r.rec = rec
	return r, nil
}

// eval runs the transition script; with WaitReplicas, WAIT follows it on
// the same connection (one pipeline), so that it waits for the script's
// writes and every write the process made before them: Redis's
// replication stream is one sequence.
func (db *DB) eval(ctx context.Context, keys []string, argv []any) ([]any, error) {
	if db.waitReplicas == 0 {
		return transition.Run(ctx, db.rdb, keys, argv...).Slice()
	}
	for loaded := false; ; loaded = true {
		var script *redis.Cmd
		var wait *redis.Cmd
		_, _ = db.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			script = transition.EvalSha(ctx, p, keys, argv...)
			// A pipeline reads its replies within the connection's read
			// timeout (3 s by default), which maxWaitTimeout stays under.
			wait = p.Do(ctx, "wait", db.waitReplicas, db.waitTimeout.Milliseconds())
			return nil
		})
		if redis.HasErrorPrefix(script.Err(), "NOSCRIPT") && !loaded {
			// A new master (after a failover) or a flushed script cache.
			if err := transition.Load(ctx, db.rdb).Err(); err != nil {
				return nil, fmt.Errorf("load the transition script: %w", err)
			}
			continue
		}
		vals, err := script.Slice()
		if err != nil {
			return nil, err
		}
		n, err := wait.Int64()
		if err != nil {
			return nil, fmt.Errorf("wait for %d replicas: %w", db.waitReplicas, err)
		}
		if n < int64(db.waitReplicas) {
			return nil, &NotReplicatedError{Want: db.waitReplicas, Got: int(n), Within: db.waitTimeout}
		}
		return vals, nil
	}
}

// refusal turns a refusing code into a *TransitionError.
func (r *result) refusal(attempt int) error {
	switch r.code {
	case "notfound":
		return fmt.Errorf("%s job %s: %w", r.op, r.id, ErrNotFound)
	case "stale":
		return r.refused(ErrStale, attempt)
	case "terminal":
		return r.refused(ErrTerminal, attempt)
	case "illegal":
		return r.refused(ErrIllegal, attempt)
	}
	return r.unexpected()
}

func (r *result) refused(sentinel error, attempt int) error {
	te := &transitionError{TransitionError{Op: r.op, ID: r.id, Attempt: attempt, Err: sentinel}, r.raw["dlq"] == "1"}
	if r.rec != nil {
		te.From, te.Current = r.rec.Status, r.rec.Attempt
	}
	return te
}

func (r *result) unexpected() error {
	return fmt.Errorf("%s job %s: unexpected script reply %q", r.op, r.id, r.code)
}

// transitionError carries what only this package reads of the record.
type transitionError struct {
	TransitionError
	dlq bool
}

func (e *transitionError) deadLetterOwed() bool { return e.dlq }

// Unwrap lets errors.As find the *TransitionError.
func (e *transitionError) Unwrap() error { return &e.TransitionError }

func (db *DB) decode(id string, h map[string]string) (*proto.Record, error) {
	key := db.key(proto.JobKey(id))
	rec, err := decodeRecord(key, h)
	if err != nil {
		return nil, err
	}
	if rec.ID != id {
		return nil, &CorruptError{Key: key, Field: "id", Value: rec.ID, Reason: "does not match the key"}
	}
	return rec, nil
}

func boolArg(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// CountRetried, CountDuplicate and CountRecreated are Counts keys beside
// the terminal statuses.
const (
	CountRetried   = "RETRIED"
	CountDuplicate = "DUPLICATE"
	CountRecreated = "RECREATED"
)

// Counts returns how many jobs reached each terminal status, and the other
// counters of proto.StatsKey, since the counters began.
func (db *DB) Counts(ctx context.Context) (map[proto.Status]int64, error) {
	return db.counts(ctx, db.key(proto.StatsKey))
}

// PoolCounts returns how many jobs of one pool reached each terminal
// status, and CountRetried, since the counters began (proto.PoolStatsKey).
func (db *DB) PoolCounts(ctx context.Context, pool string) (map[proto.Status]int64, error) {
	return db.counts(ctx, db.key(proto.PoolStatsKey(pool)))
}

func (db *DB) counts(ctx context.Context, key string) (map[proto.Status]int64, error) {
	h, err := db.rdb.HGetAll(ctx, key).Result()
	if err != nil {
		return nil, fmt.Errorf("read job counts: %w", err)
	}
	out := make(map[proto.Status]int64, len(h))
	for k, v := range h {
		n, ok := parseCount(v)
		if !ok {
			return nil, &CorruptError{Key: key, Field: k, Value: v, Reason: "is not a count"}
		}
		out[proto.Status(k)] = n
	}
	return out, nil
}
