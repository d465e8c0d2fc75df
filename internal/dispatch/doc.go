// Package dispatch is the control plane's admission loop: it consumes the
// intake stream (shared by every dispatcher replica), validates each
// submission, records it as IN_QUEUE, picks its pool and lane, and publishes
// it on the jobs stream for the workers. A submission that cannot run is
// never dropped silently: it is recorded FAILED with the reason, or, when it
// has no usable id, republished on the rejects subject.
package dispatch
