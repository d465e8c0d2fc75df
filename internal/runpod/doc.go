// Package runpod speaks RunPod on the outside and the fleet's contract on
// the inside. This package is the endpoint API (api mode): every operation
// of RunPod's https://api.runpod.ai/v2/{endpoint_id}/… under
// /v2/{endpoint_id}/ and bare (run, runsync, status, status-sync, stream,
// cancel, retry, purge-queue, health), so any RunPod client works against a
// self-hosted fleet by changing its base URL. It keeps no state of its own:
// every answer comes from Redis, NATS and the blob store, so replicas
// behind a load balancer answer the same; every change of a job's state
// (submit, cancel, retry, purge) is the lifecycle core's. With Endpoints
// (ENDPOINTS) each endpoint id stands for a pool, as each RunPod endpoint
// is its own queue; the map and its parser live here.
//
// Its sub-packages are the two other faces of the runpod-adapter:
// serverless (the adapter inside a RunPod worker container, taking jobs
// from RunPod's queue) and jobtake (the worker-side routes RunPod's Python
// workers call, so they can join the fleet). What they share lives here:
// the request decoder (DecodeRunRequest), the image offloading of inputs,
// and the JSON answers; RunPod's view of a job is package jobview.
package runpod
