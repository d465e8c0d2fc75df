package jobview

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"testing"

	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

// BenchmarkInlineOutput is the cost of a /status or /runsync answer that
// returns a 64 KiB image inline: the record's output read, the image read
// from the blob store (a real NATS object store) and base64-encoded, the
// answer's output encoded again.
func BenchmarkInlineOutput(b *testing.B) {
	n := testenv.StartNATS(b)
	q, err := queue.New(n.Conn)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err := q.Ensure(ctx, queue.Config{}); err != nil {
		b.Fatal(err)
	}
	img := make([]byte, 64<<10)
	_, _ = rand.Read(img)
	const key = "out/bench/1/9/ComfyUI_00001_.png"
	if _, err := q.Blobs().Put(ctx, key, "image/png", bytes.NewReader(img)); err != nil {
		b.Fatal(err)
	}
	raw := json.RawMessage(`{"images":[{"filename":"ComfyUI_00001_.png","type":"base64","node_id":"9","size":65536,"blob":"` + key + `"}]}`)
	b.ReportAllocs()
	b.SetBytes(int64(len(img)))
	for range b.N {
		if out := inlineOutput(ctx, q.Blobs(), raw); !bytes.Contains(out, []byte(`"data":"`)) {
			b.Fatalf("not inlined: %.200s", out)
		}
	}
}
