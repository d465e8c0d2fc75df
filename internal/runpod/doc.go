// Package runpod speaks RunPod on the outside and the fleet's contract on
// the inside. This package is the endpoint API (api mode): every operation
// of RunPod's https://api.runpod.ai/v2/{endpoint_id}/… under
// /v2/{endpoint_id}/ and bare (run, runsync, status, status-sync, stream,
// cancel, retry, purge-queue, health), so any RunPod client works against a
// self-hosted fleet by changing its base URL. It keeps no state of its own:
// every answer comes from Redis, NATS and the blob store, so replicas
// behind a load balancer answer the same.
//
// Its sub-packages are the two other faces of the runpod-adapter:
// serverless (the adapter inside a RunPod worker container, taking jobs
// from RunPod's queue) and jobtake (the worker-side routes RunPod's Python
// workers call, so they can join the fleet). The types they share live
// here: the job view (BuildView), the request decoder (DecodeRunRequest),
// the event log behind /stream (EventLog), and the image offloading of
// inputs.
package runpod
