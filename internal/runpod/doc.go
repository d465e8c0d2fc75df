// Package runpod speaks RunPod on the outside and the fleet's contract on
// the inside. In api mode it serves RunPod's endpoint API (/run, /runsync,
// /status, /health, under /v2/{endpoint_id}/ and bare), so any RunPod client
// works against a self-hosted fleet by changing its base URL. It keeps no
// state of its own: every answer comes from Redis, NATS and the blob store,
// so replicas behind a load balancer answer the same.
package runpod
