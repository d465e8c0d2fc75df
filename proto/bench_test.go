package proto_test

import (
	"strings"
	"testing"

	"github.com/comfyfleet/comfyfleet/proto"
)

// BenchmarkDecodeJob decodes a well-formed batch message (every field
// set, a small workflow), the dispatcher's and the worker's cost per job,
// and a malformed one, which is decoded again field by field.
func BenchmarkDecodeJob(b *testing.B) {
	msg := `{"v":1,"id":"sweep-7-0042","batch_id":"sweep-7","index":41,"lane":"batch","pool":"default","source":"batch",` +
		`"webhook":"https://example.com/hook","policy":{"executionTimeout":600000,"ttl":86400000},"output":{"s3_prefix":"sweeps/7"},` +
		`"retention_ms":86400000,"submitted_at":"2026-01-02T03:04:05Z",` +
		`"input":{"workflow":{"3":{"class_type":"KSampler","inputs":{"seed":42,"steps":20,"text":"` + strings.Repeat("a cat ", 200) + `"}}}}}`
	for _, tt := range []struct{ name, msg string }{
		{"valid", msg},
		{"malformed", strings.Replace(msg, `"index":41`, `"index":"41"`, 1)},
	} {
		data := []byte(tt.msg)
		b.Run(tt.name, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				_, _ = proto.DecodeJob(data)
			}
		})
	}
}
