package worker

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/proto"
)

func TestRetryDelayGrowsExponentiallyWithJitter(t *testing.T) {
	t.Parallel()
	base := 100 * time.Millisecond
	tests := []struct {
		failures int
		step     time.Duration // the delay is in [step/2, step]
	}{{0, base}, {1, base}, {2, 2 * base}, {3, 4 * base}, {4, 8 * base}, {5, 16 * base}, {9, 16 * base}}
	for _, tt := range tests {
		seen := map[time.Duration]bool{}
		for range 50 {
			d := retryDelay(base, tt.failures)
			require.GreaterOrEqual(t, d, tt.step/2, "failures %d", tt.failures)
			require.LessOrEqual(t, d, tt.step, "failures %d", tt.failures)
			seen[d] = true
		}
		require.Greater(t, len(seen), 1, "jitter at failures %d", tt.failures)
	}
	require.Zero(t, retryDelay(0, 3), "no delay stays no delay (ComfyUI died: at once)")
}

func TestExpired(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		job  proto.Job
		want bool
	}{
		{"no submission time", proto.Job{Policy: proto.Policy{TTL: 1}}, false},
		{"within its TTL", proto.Job{SubmittedAt: now.Add(-time.Second), Policy: proto.Policy{TTL: 2000}}, false},
		{"past its TTL", proto.Job{SubmittedAt: now.Add(-3 * time.Second), Policy: proto.Policy{TTL: 2000}}, true},
		{"default TTL of 24h", proto.Job{SubmittedAt: now.Add(-25 * time.Hour)}, true},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, expired(&tt.job, now), tt.name)
	}
}
