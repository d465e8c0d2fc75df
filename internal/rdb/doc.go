// Package rdb is comfyfleet's adapter to Redis: every key the fleet keeps
// there is read and written here, under the names of proto's key layout,
// and go-redis's types and errors stay inside.
//
// The job's state is the status record (proto.JobKey, the fields of
// proto.Record, times as Unix milliseconds, output as its raw JSON text)
// and beside it the job's lease, its place in the TTL index and its attempt
// log. A few record fields belong to this package and are not part of the
// wire contract: intake (the submission that made the record),
// retention_ms, ttl_ms and expires_at (the job's policy), finished_attempt,
// requeue_reason and dlq (a dead letter is owed).
//
// Every change of a job's state is one call of one Lua script
// (transition.lua), atomic, so that concurrent writers (a worker, a
// redelivered worker, the dispatcher's sweeper, an operator's cancel) can
// never produce an illegal transition or half of one. Its operations:
//
//	operation     from                          to
//	Admit         (no record)                   IN_QUEUE, or FAILED with a reason
//	              IN_QUEUE of the same intake   FAILED with a reason (else nothing)
//	Create        (no record)                   IN_QUEUE
//	Claim         IN_QUEUE, IN_PROGRESS whose   IN_PROGRESS, attempt+1, leased
//	              lease lapsed
//	              IN_QUEUE past its TTL         TIMED_OUT
//	Renew         IN_PROGRESS, fenced           (lease extended)
//	Requeue       IN_PROGRESS, fenced           IN_QUEUE, retries+1
//	Finish        IN_PROGRESS, fenced           COMPLETED, FAILED or TIMED_OUT
//	Expire        IN_QUEUE past its TTL         TIMED_OUT
//	Cancel        IN_QUEUE, IN_PROGRESS         CANCELLED
//	CancelQueued  IN_QUEUE                      CANCELLED (purge-queue)
//	Fail          IN_QUEUE, fenced              FAILED
//	Retry         FAILED, TIMED_OUT             IN_QUEUE, retries+1
//	Reclaim       IN_PROGRESS, lease lapsed     IN_QUEUE, or TIMED_OUT past its deadline
//
// Attempt fences the workers: Claim hands out the next attempt number and a
// lease, and every later write names it, so a worker whose lease lapsed and
// whose job went to another worker can never overwrite the newer attempt
// (ErrStale), and learns at its next renewal that it lost the job
// (ErrLeaseLost). A terminal state never changes again except through Retry
// (ErrTerminal). A refused transition returns the current record with a
// *TransitionError.
//
// Every time the script writes comes from Redis's clock (TIME), so the
// leases of workers on different hosts, the record's delayTime and the
// TTL are measured on one clock. The script keeps to commands that
// miniredis implements too (the dev stack runs on it when no redis-server
// is installed).
//
// Terminal records expire after the job's retention (RunPod keeps /run
// results 30 minutes and /runsync results 1 minute); the keys of a job
// that is not terminal expire an hour after its TTL, counted from its last
// transition, so a job whose every process died leaves nothing forever.
//
// Dial reaches one Redis, or the master that Redis Sentinel names
// (go-redis's failover client, which follows each failover). Replication
// is asynchronous, so a failover may lose the master's last writes: with
// Options.WaitReplicas every transition is followed on its connection by
// WAIT, and a transition fewer replicas confirmed fails
// (*NotReplicatedError) for its caller to try again. Redis Cluster is not
// supported: the script moves a job's keys together with keys the whole
// fleet shares, which no hash slot can hold together (docs/scaling.md).
//
// Beside the jobs: the fleet's heartbeats (fleet.go), webhook targets
// (webhook.go), batch indexes (batch.go), /stream cursors (cursor.go) and
// the sweepers' shared clock (sweep.go).
package rdb
