// Package jobview is RunPod's view of a job (runpod-protocol.md §C.4):
// what /status, /runsync and /stream answer, what webhooks carry and what
// the serverless worker posts to job-done. It is built from the status
// record, with the output files read back from the blob store and inlined,
// and from the job's events (Chunk).
package jobview
