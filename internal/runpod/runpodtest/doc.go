// Package runpodtest holds what the runpod-adapter's tests share: a fleet
// on real NATS and Redis with a dispatcher (StartFleet), a scripted fleet
// worker that plays jobs from their input (FleetWorker), a fake RunPod
// platform that records and checks every request a RunPod worker makes
// (Platform), and a Go port of RunPod's Python worker running RunPod's
// mock-worker handler, which makes exactly the requests of
// runpod-protocol.md Appendix A (MockWorker).
package runpodtest
