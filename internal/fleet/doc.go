// Package fleet is the registry of live workers: each gpuworker writes a
// heartbeat hash to Redis (proto.WorkerKey) with a short TTL, and the
// adapter, the dispatcher and the CLI list them. A worker that stops
// beating disappears from the list on its own. A heartbeat carries the
// worker's GPU, ComfyUI version, state, current job and its progress, the
// models its ComfyUI offers and the ones it last loaded (models.go).
//
// View (view.go) is the fleet's state as one JSON document: workers, the
// depth and oldest wait of every pool's lanes, the dead letters and the job
// totals. The dispatcher serves it on GET /fleet and `comfyfleet fleet`
// prints it, from the same code.
package fleet
