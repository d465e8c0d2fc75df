// Package jobtake is the runpod-adapter's job-take host: the worker-side
// routes of RunPod's platform (runpod-protocol.md §A.17), served from the
// fleet's queue, so that an unmodified RunPod Python worker (for example
// worker-comfyui's own image, with RUNPOD_WEBHOOK_GET_JOB pointed here)
// joins the fleet and runs jobs next to the gpuworkers.
//
// A job taken this way follows the same state machine, leases and retries
// as a gpuworker's: the host takes the job message from the pool's lanes
// (interactive first; with Endpoints, the pool of the endpoint id that the
// worker's URLs name), Claims it in Redis for the worker (a new attempt),
// keeps the message's lease alive with InProgress while the worker's pings
// name the job and its main process shows life (its job-stop poll, held
// open while it holds jobs, a take, a post: the SDK's ping process
// outlives a killed main process), Finishes it fenced by that attempt
// when the worker posts job-done, ends it TIMED_OUT past its execution
// timeout, and gives it back (Requeue and NAK) when its lease lapses.
// Cancels and timeouts reach the worker on job-stop.
//
// The host keeps no state in its process: the lease of every taken job
// (its attempt and the message's ack subject) lives in Redis, and acks,
// NAKs and InProgress are sent on the ack subject, so a worker's take,
// pings and results may each reach a different adapter replica.
//
// It parses what the Python SDK really sends (§A.4): a JSON body under a
// form content type, a sticky X-Request-ID that is ignored (the job id is
// taken from the path, cut at the first "&"), parameters appended to the
// path when a template has no "?", and job ids joined by commas in pings.
package jobtake
