// Package lifecycle owns a job's life: every change of a job's state is
// one operation of Core, which does, together, everything that must happen
// with it — the fenced transition of the status record (one call of
// rdb's transition script), the lease, the TTL index, the attempt log, the
// event, the dead letter, and the settling (ack, NAK, in-progress) of the
// job message's delivery. No other package writes a status, publishes a
// status event or a dead letter, or touches a lease; the roles (the
// dispatcher, the gpuworker, the RunPod API and job-take host, the CLI)
// call Core, in the spirit of river's client, completer and rescuer.
//
//	Submit            a producer's submission (and, for the API, its early record)
//	Admit             the dispatcher's admission of an intake message
//	Claim             a worker takes a delivered job: a new attempt under a lease
//	Renew             the lease lives on (ErrLeaseLost: stop and write nothing)
//	Requeue           the attempt gives the job back (counted or not)
//	Finish            the attempt ends the job (with its dead letter when asked)
//	Cancelled         the attempt stopped on a cancel
//	Cancel            an operator's or a client's cancel (and purge: CancelQueued)
//	Retry, Replay     a failed job, or a dead letter, queued again
//	Sweeper           TTL expiry and the reclaim of lapsed leases, in every dispatcher
//
// The rules it keeps: intake never changes a job that has a record, but for
// the redelivery of the submission that made it; every write of an attempt
// is fenced by its attempt number; a job runs on one GPU at a time (a claim
// of a job whose lease lives is refused, and a worker that lost its lease
// stops); lease times are Redis's; a dead letter is durable before the
// delivery is acked; a job message whose record was lost is never dropped
// (its record is made again). docs/architecture.md draws the whole map.
package lifecycle
