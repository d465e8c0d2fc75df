// Package serverless is the runpod-adapter's serverless worker mode: run
// inside a RunPod worker container (the mode is chosen, as RunPod's Python
// SDK does, by RUNPOD_WEBHOOK_GET_JOB being set), it takes jobs from
// RunPod's queue and hands them to the fleet, so a RunPod endpoint's
// traffic lands on the same GPUs as everything else.
//
// It speaks RunPod's worker protocol the way runpod-python 1.12.0 does
// (runpod-protocol.md §A): job-take, or job-take-batch while more than one
// of its Concurrency slots is free; job-stream with the fleet's progress;
// job-done with the result, retried on 5xx; ping with the ids of the jobs
// it holds; the job-stop channel, on which a stopped job is cancelled in
// the fleet and never reported; and refresh_worker (stopPod on every
// result, then exit). URLs are built by string replacement and appending,
// exactly as the SDK builds them (§A.3), and requests carry the SDK's
// headers (§A.4) with the raw key in Authorization.
package serverless
