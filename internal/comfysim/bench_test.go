package comfysim_test

import (
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/comfysim/simtest"
)

// BenchmarkPromptThroughput measures prompts per second through the HTTP API
// with zero execution time and a 16x16 image per prompt, the emulator's share
// of the end-to-end throughput goal.
//
// Files go to /dev/shm when it exists: creating files on this machine's disk
// costs about a millisecond each, which would measure the disk instead.
func BenchmarkPromptThroughput(b *testing.B) {
	cfg := comfysim.Config{StepDelay: -1}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		dir, err := os.MkdirTemp("/dev/shm", "comfysim-bench-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = os.RemoveAll(dir) })
		cfg.Dir = dir
	}
	sim := simtest.Start(b, cfg)
	h := &harness{sim: sim}
	ws := h.dialB(b, "bench")
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	b.ResetTimer()
	start := time.Now()
	last := ""
	for i := 0; i < b.N; i++ {
		p := workflow{w: 16, h: 16, steps: 1, seed: strconv.Itoa(i)}.json()
		extra := ""
		if i == b.N-1 {
			last = newID()
			extra = `, "client_id": "bench", "prompt_id": "` + last + `"`
		}
		resp, err := client.Post(sim.URL+"/prompt", "application/json", strings.NewReader(`{"prompt": `+p+extra+`}`))
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	// Prompts run in submission order, so the last one ends the batch.
	ws.until(last)
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "prompts/s")
}
