// Package runpodtest holds what the runpod-adapter's tests share, and only
// that: a fleet on real NATS and Redis with the lifecycle core and an
// admission loop (StartFleet), a scripted fleet worker that plays jobs
// from their input through the core (FleetWorker), a fake RunPod platform
// (Platform), the one request recorder that records every request a
// RunPod worker makes to either side (Recorder), and a Go port of
// RunPod's Python worker running RunPod's mock-worker handler, which makes
// exactly the requests of runpod-protocol.md Appendix A (MockWorker).
package runpodtest
