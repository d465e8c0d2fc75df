// Package worker is the gpuworker: it sits next to one ComfyUI (one GPU),
// pulls one job at a time from its pool's queue, runs it over ComfyUI's HTTP
// and WebSocket API, stores the outputs in the blob store, writes the fenced
// status to Redis, publishes events, and only then acks the message.
//
// Shutdown is two-phase: Stop stops pulling, lets the job in hand finish
// within the grace period, then cancels it and puts it back on the queue so
// another GPU takes it at once.
package worker
