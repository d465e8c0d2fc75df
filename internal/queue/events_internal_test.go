package queue

import (
	"testing"

	"github.com/comfyfleet/comfyfleet/proto"
)

// BenchmarkEncodeEvent encodes the events every job sends (IN_QUEUE,
// IN_PROGRESS, a progress step, COMPLETED) with their subjects, as
// PublishEvent and PublishEventNoWait do before they send.
func BenchmarkEncodeEvent(b *testing.B) {
	for _, tt := range []struct {
		name string
		ev   proto.Event
	}{
		{"in-queue", proto.Event{JobID: "sweep-7-0042", Tenant: "acme", Type: proto.EventStatus, Status: proto.StatusInQueue}},
		{"in-progress", proto.Event{JobID: "sweep-7-0042", Type: proto.EventStatus, Status: proto.StatusInProgress, Attempt: 1, WorkerID: "gpu-1-0"}},
		{"progress", proto.Event{JobID: "sweep-7-0042", Type: proto.EventProgress, Attempt: 1, WorkerID: "gpu-1-0",
			Progress: &proto.Progress{Node: "3", Value: 7, Max: 20, Percent: 35}}},
		{"failed", proto.Event{JobID: "sweep-7-0042", Type: proto.EventStatus, Status: proto.StatusFailed, Attempt: 3,
			Error: "ComfyUI rejected the workflow: node 3 (KSampler): value not in list: ckpt_name"}},
	} {
		b.Run(tt.name, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				ev := tt.ev
				if _, err := encodeEvent(&ev); err != nil {
					b.Fatal(err)
				}
				_ = ev.Subject()
			}
		})
	}
}
