package dispatch

import (
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/worker"
)

func TestDeadLetterHeadersAreTheWorkers(t *testing.T) {
	t.Parallel()
	require.Equal(t, worker.DLQReasonHeader, dlqReasonHeader)
	require.Equal(t, worker.DLQAttemptsHeader, dlqAttemptsHeader)
}

// FuzzDecodeDeadLetter: a dead letter's body and headers are outside
// input (anything may publish on cf.dlq.*); decoding never panics.
func FuzzDecodeDeadLetter(f *testing.F) {
	f.Add([]byte(`{"v":1,"id":"a","input":{"workflow":{}}}`), "boom", `["attempt 1: boom"]`)
	f.Add([]byte(`{`), "", `[1,2]`)
	f.Fuzz(func(t *testing.T, data []byte, reason, attempts string) {
		h := nats.Header{}
		h.Set(dlqReasonHeader, reason)
		h.Set(dlqAttemptsHeader, attempts)
		dl := decodeDeadLetter(&jetstream.RawStreamMsg{Subject: "cf.dlq.p", Sequence: 1, Data: data, Header: h})
		require.Equal(t, "p", dl.Pool)
	})
}
