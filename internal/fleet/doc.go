// Package fleet is the fleet's read model: the state of the workers and
// queues as one document (View: the live workers' heartbeats, the depth
// and oldest wait of every pool's lanes, their jobs per minute, the paused
// lanes and draining workers, the dead letters and the job totals), which
// the dispatcher serves on GET /fleet and `comfyfleet fleet` prints, and
// the models a job needs (by file and by URL) and a worker offers, holds
// warm or has cached (models.go), which admission and the workers'
// model-aware routing judge by. Heartbeats
// themselves are proto.Heartbeat, kept in Redis by package rdb.
package fleet
