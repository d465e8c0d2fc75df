// Package dispatch is the control plane's admission loop: it consumes the
// intake stream (shared by every dispatcher replica), validates each
// submission, records it as IN_QUEUE, picks its pool and lane, and publishes
// it on the jobs stream for the workers. A submission that cannot run is
// never dropped silently: it is recorded FAILED with the reason, or, when it
// has no usable id, republished on the rejects subject.
//
// Around admission (each in its own file):
//   - webhook.go delivers each job's terminal RunPod status body to its
//     webhook URL from a durable consumer of CF_EVENTS shared by the
//     replicas, with retries, an SSRF guard and Standard Webhooks signatures;
//   - routing.go fails at admission a job whose models no live worker of its
//     pool has (the warm-worker preference is the workers' half, in
//     internal/worker);
//   - sweeper.go is the safety net of time and failure, run by every
//     replica: jobs still queued past their policy.ttl end TIMED_OUT, and the
//     job of a worker whose lease lapsed (it died) is handed back at once by
//     NAKing its delivery, or ends TIMED_OUT once past its execution timeout
//     plus a grace;
//   - deadletters.go lists and replays CF_DLQ (GET /dlq,
//     POST /dlq/{seq}/replay, and `comfyfleet dlq`);
//   - metrics.go and http.go serve the fleet view (GET /fleet) and the
//     Prometheus series (GET /metrics) on LISTEN_ADDR, beside the other
//     routes of the control plane.
package dispatch
