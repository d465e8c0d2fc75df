// Package dispatch is the control plane: the admission loop, which
// consumes the intake stream (shared by every dispatcher replica) and
// hands each message to the lifecycle core's Admit (decode, place, record,
// publish on the pool's lane; a submission that cannot run is recorded
// FAILED with the reason, or parked on cf.rejects when it has no usable
// id), up to Config.Concurrency at once, those of one job id in intake
// order; and the lifecycle core's Sweeper, which every replica runs.
//
// Around admission (each in its own file):
//   - admission.go and routing.go: the optional checks of a new job; a job
//     whose models named by file no live worker of its pool has fails at
//     admission (a model named by URL is fetched where the job runs, so it
//     is never missing here; the preference for a worker with the models
//     warm, then on disk, is the workers' half, in internal/worker);
//   - webhook.go delivers each job's terminal RunPod status body to its
//     webhook URL from a durable consumer of the final events
//     (cf.events.*.final) shared by the replicas, with retries, an SSRF
//     guard and Standard Webhooks signatures;
//   - deadletters.go serves CF_DLQ's list and replay (GET /dlq,
//     POST /dlq/{seq}/replay; `comfyfleet dlq` does the same);
//   - metrics.go and http.go serve the fleet view (GET /fleet) and the
//     Prometheus series (GET /metrics), beside the other routes of the
//     control plane.
package dispatch
