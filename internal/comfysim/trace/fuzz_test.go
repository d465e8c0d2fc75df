package trace_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/trace"
)

// FuzzDecode: Decode never panics, and what it accepts encodes again.
func FuzzDecode(f *testing.F) {
	seed, err := os.ReadFile(filepath.Join("..", "testdata", "traces", "misc_routes.json"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add([]byte(`{"scenario": "x", "steps": [{}]}`))
	f.Add([]byte(`{"scenario": "", "steps": []}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		tr, err := trace.Decode(data)
		if err != nil {
			return
		}
		if _, err := trace.Encode(tr); err != nil {
			t.Fatalf("decoded trace does not encode: %v", err)
		}
	})
}
