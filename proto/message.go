package proto

// The fleet's own messages for conditions that worker-comfyui has no
// string for, named once so that every writer and every test says the
// same. worker-comfyui's strings (reference/worker-comfyui.md §2) are
// written where the condition is met, in the worker.
const (
	// MsgTTLExpired is the error of a job whose policy.ttl ran out while it
	// waited in the queue.
	MsgTTLExpired = "Job expired: it was still queued when its TTL (policy.ttl) ran out."
	// MsgWorkerSilent is the error of a job whose worker went silent (its
	// lease lapsed) after the job's execution deadline had passed.
	MsgWorkerSilent = "Job execution timed out: its worker went silent and the job is past its execution timeout."
	// MsgLeaseLapsed is the attempt-log reason of a job handed back because
	// its worker stopped renewing the lease.
	MsgLeaseLapsed = "its worker stopped renewing the lease (lost)"
	// MsgRetryNotQueued is the error of a retried or replayed job whose
	// message could not be queued again.
	MsgRetryNotQueued = "retry could not be queued: "
)
