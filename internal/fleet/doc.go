// Package fleet is the registry of live workers: each gpuworker writes a
// heartbeat hash to Redis (proto.WorkerKey) with a short TTL, and the
// adapter, the dispatcher and the CLI list them. A worker that stops
// beating disappears from the list on its own.
package fleet
