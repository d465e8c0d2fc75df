package dispatch_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/dispatch"
	"github.com/comfyfleet/comfyfleet/internal/fleet"
	"github.com/comfyfleet/comfyfleet/internal/metrics"
	"github.com/comfyfleet/comfyfleet/internal/metrics/metricstest"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

// The dispatcher serves the fleet view and the metrics; both show the
// workers, the lanes with their depth and oldest age, and the totals.
func TestFleetAndMetricsRoutes(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	ctx := testenv.Context(t, 30*time.Second)
	require.NoError(t, b.db.Beat(ctx, proto.Heartbeat{ID: "gpu-1", Pool: proto.DefaultPool, State: proto.WorkerRunning, JobID: "x",
		ComfyUIVersion: "0.3.40", Device: "cuda:0 NVIDIA L4", VRAMTotal: 24 << 30, VRAMFree: 8 << 30, Progress: 0.5,
		Models: map[string][]string{"checkpoints": {"sd_xl_base_1.0.safetensors"}}, Warm: []string{"sd_xl_base_1.0.safetensors"}}))
	require.NoError(t, b.db.Beat(ctx, proto.Heartbeat{ID: "gpu-2", Pool: proto.DefaultPool, State: proto.WorkerIdle}))

	for i := range 3 {
		id := "queued-" + string(rune('a'+i))
		b.submit(t, proto.SourceBatch, `{"id":"`+id+`","input":{"workflow":{}}}`, id)
		b.waitRecord(t, id, func(r *proto.Record) bool { return r.Status == proto.StatusInQueue })
	}
	// Each is on its lane once its admission ended (the lane comes last).
	require.Eventually(t, func() bool { return b.streamMsgs(t, proto.SubmitStream) == 0 && b.streamMsgs(t, proto.JobsStream) == 3 },
		10*time.Second, 10*time.Millisecond, "the jobs are on their lane")
	// One of them ends (cancelled while queued; its message stays on the
	// lane until a worker meets it): the lane's rate counts it.
	_, err := b.db.CancelQueued(ctx, "queued-a")
	require.NoError(t, err)
	view := func(ctx context.Context) (*fleet.View, error) {
		return fleet.ReadView(ctx, b.db, b.q)
	}
	mreg := metrics.NewRegistry()
	dispatch.NewMetrics(mreg, view)
	srv := dispatch.NewHTTPServer("127.0.0.1:0", dispatch.FleetRoutes(view, mreg, zaptest.NewLogger(t)), zaptest.NewLogger(t))
	require.NoError(t, srv.Start())
	t.Cleanup(srv.Stop)
	base := "http://" + srv.Addr()

	code, body := get(t, base+"/fleet")
	require.Equal(t, http.StatusOK, code, body)
	var v fleet.View
	require.NoError(t, json.Unmarshal([]byte(body), &v))
	require.Len(t, v.Workers, 2)
	require.Equal(t, "gpu-1", v.Workers[0].ID)
	require.Equal(t, 0.5, v.Workers[0].Progress)
	require.Equal(t, []string{"sd_xl_base_1.0.safetensors"}, v.Workers[0].Warm)
	require.Equal(t, "0.3.40", v.Workers[0].ComfyUIVersion)
	var batch queue.LaneDepth
	for _, l := range v.Lanes {
		if l.Pool == proto.DefaultPool && l.Lane == proto.LaneBatch {
			batch = l
		}
	}
	require.Equal(t, uint64(3), batch.Queued)
	require.False(t, batch.Oldest.IsZero())
	require.Less(t, time.Since(batch.Oldest), time.Minute)

	fams := metricstest.Scrape(t, base+"/metrics")
	require.Equal(t, 3.0, fams.Value(t, "comfyfleet_queue_depth", "pool", "default", "lane", "batch"))
	require.Zero(t, fams.Value(t, "comfyfleet_queue_depth", "pool", "default", "lane", "interactive"))
	require.Zero(t, fams.Value(t, "comfyfleet_queue_held", "pool", "default", "lane", "batch"), "fair share off: nothing held")
	require.Positive(t, fams.Value(t, "comfyfleet_queue_oldest_age_seconds", "pool", "default", "lane", "batch"))
	require.Less(t, fams.Value(t, "comfyfleet_queue_oldest_age_seconds", "pool", "default", "lane", "batch"), 60.0)
	require.Equal(t, 1.0, fams.Value(t, "comfyfleet_lane_jobs_per_minute", "pool", "default", "lane", "batch"))
	require.Zero(t, fams.Value(t, "comfyfleet_lane_jobs_per_minute", "pool", "default", "lane", "interactive"))
	require.Equal(t, 1.0, fams.Value(t, "comfyfleet_workers", "pool", "default", "state", "idle"))
	require.Equal(t, 1.0, fams.Value(t, "comfyfleet_workers", "pool", "default", "state", "running"))
	require.Zero(t, fams.Value(t, "comfyfleet_dlq_size"))
	require.Zero(t, fams.Value(t, "comfyfleet_intake_depth"))
	require.Zero(t, fams.Value(t, "comfyfleet_jobs_total", "status", "COMPLETED"))
	require.Equal(t, 1.0, fams.Value(t, "comfyfleet_jobs_total", "status", "CANCELLED"))

	code, _ = get(t, base+"/healthz")
	require.Equal(t, http.StatusOK, code)
}

func TestHTTPServerStopIsIdempotentAndSafeWithoutStart(t *testing.T) {
	t.Parallel()
	s := dispatch.NewHTTPServer("127.0.0.1:0", nil, nil)
	s.Stop()
	require.NoError(t, s.Start())
	s.Stop()
	s.Stop()
}

func newRegistry() *metrics.Registry { return metrics.NewRegistry() }

// With Redis away, the fleet view answers 503 with a fixed text: the
// client's error names Redis's address, which stays in the log.
func TestUnavailableBackendIsNotNamed(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	rc := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	t.Cleanup(func() { _ = rc.Close() })
	db := rdb.New(rc, rdb.Options{Prefix: "unavailable:"})
	b := setup(t, 1)
	view := func(ctx context.Context) (*fleet.View, error) { return fleet.ReadView(ctx, db, b.q) }
	srv := dispatch.NewHTTPServer("127.0.0.1:0", dispatch.FleetRoutes(view, nil, zaptest.NewLogger(t)), zaptest.NewLogger(t))
	require.NoError(t, srv.Start())
	t.Cleanup(srv.Stop)
	code, body := get(t, "http://"+srv.Addr()+"/fleet")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.JSONEq(t, `{"error":"read fleet view: the fleet's backend is unavailable, try again"}`, body)
	require.NotContains(t, body, addr)
}
