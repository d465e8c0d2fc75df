// Package status keeps each job's status record in Redis and moves it through
// RunPod's states as a fenced state machine.
//
// The record is the hash at [proto.JobKey] (behind an optional key prefix),
// with the fields of [proto.Record]: times as Unix milliseconds, output as its
// raw JSON text. A few more fields belong to this package and are not part of
// the wire contract: retention_ms (how long the terminal record is kept),
// ttl_ms (the expiry of the record while it is not terminal),
// finished_attempt (the attempt whose Finish made it terminal) and
// requeue_reason (why the last attempt gave the job back).
//
// Every change is made by one Lua script, atomically, so that concurrent
// writers (a worker, a redelivered worker, the dispatcher, an operator's
// cancel) can never produce an illegal transition. The legal ones:
//
//	operation  from                           to
//	Create     (no record)                    IN_QUEUE
//	Reject     (no record), IN_QUEUE,         FAILED
//	           IN_PROGRESS
//	Claim      IN_QUEUE, IN_PROGRESS          IN_PROGRESS, attempt+1
//	Requeue    IN_PROGRESS, fenced            IN_QUEUE, retries+1
//	Finish     IN_PROGRESS, fenced            COMPLETED, FAILED or TIMED_OUT
//	Expire     IN_QUEUE                       TIMED_OUT
//	Cancel     IN_QUEUE, IN_PROGRESS          CANCELLED
//	CancelQueued IN_QUEUE                     CANCELLED (purge-queue)
//	Retry      FAILED, TIMED_OUT              IN_QUEUE, retries+1
//
// Attempt fences the workers: Claim hands out the next attempt number, and
// Requeue and Finish succeed only for the attempt the record holds, so a
// worker whose lease expired and whose job went to another worker can never
// overwrite the newer attempt's status ([ErrStale]). A terminal state never
// changes again except through Retry ([ErrTerminal]). A refused transition
// returns the current record together with a *[TransitionError].
//
// Terminal records expire after the job's retention (RunPod keeps /run
// results 30 minutes and /runsync results 1 minute); records that are not
// terminal expire after the job's TTL plus [TTLSlack], counted from their
// last transition, so a record whose job was lost does not stay forever.
//
// The script keeps to commands that miniredis also implements (the dev stack
// runs on it when REDIS_URL is unset) and never reads Redis's clock: the
// caller's [Clock] supplies "now".
package status
