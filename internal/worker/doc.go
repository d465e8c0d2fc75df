// Package worker is the gpuworker: it sits next to one ComfyUI (one GPU),
// pulls jobs from its pool's lanes, runs them over ComfyUI's HTTP and
// WebSocket API and stores the outputs. Every change of a job's state is
// the lifecycle core's (internal/lifecycle): the worker claims a delivered
// job (a new attempt under a lease), renews the lease every third of its
// TTL, and ends the attempt with Finish, Requeue or Cancelled, each of
// which writes the fenced status, publishes the event and settles the
// message. A worker whose renewal says the lease was lost (the dispatcher
// gave the job to another worker) interrupts its prompt and drops the job
// without a write, so a job runs on one GPU at a time.
//
// A job goes through these steps (execute):
//
//   - inputs: base64 or data URIs (worker-comfyui's form), https URLs
//     fetched through an SSRF guard with a size cap and a timeout, or
//     blob-store keys for large files; uploaded in parallel with their
//     sniffed content type into a subfolder of the attempt's own
//     (comfyfleet/<job>/<attempt>), and the workflow's references
//     rewritten on its raw bytes (never through float64), so jobs
//     pipelined on one ComfyUI never see each other's files;
//   - isolation (isolation.go): before that, a workflow that names another
//     job's files ([output] or [temp] files, another job's folder, paths
//     that could leave the input folder) fails at once; when the attempt
//     ends, however it ends, its inputs are deleted from ComfyUI's input
//     folder (InputDir) or emptied through ComfyUI's upload route;
//   - the prompt, with the Comfy.org key (input beats COMFY_ORG_API_KEY) in
//     extra_data, followed through the WebSocket with reconnects,
//     reconciliation and a history poll (package comfy), under the job's
//     execution timeout and a stall watch; progress and, on request,
//     previews become events;
//   - outputs of every kind (images, videos — VHS gifs and animated files
//     included —, audio, files, text; temp outputs on request), streamed to
//     S3 (the job's s3Config, whose endpoint is reached only through an
//     SSRF guard of its own, else the worker's) as s3_url items, or to the
//     blob store as base64 items the adapter inlines; a file that cannot be
//     stored is a line in errors while the others return.
//
// Failures are classified (run/classify): validation errors and node
// errors fail at once with worker-comfyui's messages (and the options of
// any loader input); out-of-memory and transient errors go back to the
// queue with a delay; a ComfyUI that dies or restarts gives the job back at
// once so another worker takes it, up to MaxAttempts, after which the job
// fails with worker-comfyui's text and lands on the dead-letter stream. A
// cancel (cf.ctl.cancel) stops the prompt in ComfyUI and leaves the status
// to the canceller.
//
// The worker probes ComfyUI all the time: it pulls only while ComfyUI
// answers, gives the jobs in hand back within a second or two of it dying,
// and resumes when it is back (after an optional warm-up workflow). A
// prompt that makes no progress for the stall timeout is interrupted and
// ends TIMED_OUT; the lease's renewals follow the process, not progress.
//
// Its heartbeat (proto.Heartbeat, in Redis) reports the models its ComfyUI offers
// (loader inputs of /object_info), the ones of its last job (warm) and the
// files of its model cache, fetched by URL (Deps.Models); a job
// another idle worker is readier for (its models warm, or its models by
// URL on disk) is handed back a few times so that worker takes it
// (routing.go). Metrics (metrics.go) count jobs by status,
// queue wait, execution time, retries and ComfyUI errors by class.
//
// With Prefetch (PREFETCH, 1 by default) the next job is taken and its
// prompt queued in ComfyUI behind the running one, so the GPU never waits
// between jobs; a batch job waiting there gives way to an interactive job
// (deleted from ComfyUI's queue, given back without counting an attempt),
// so interactive work waits for the running job only (giveway.go).
//
// Shutdown is two-phase: Stop stops pulling, lets the jobs in hand finish
// within the grace period, then cancels them and puts them back on the
// queue so another GPU takes them at once.
package worker
