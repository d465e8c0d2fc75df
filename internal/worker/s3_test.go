package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/blob/s3"
	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/worker"
	"github.com/comfyfleet/comfyfleet/proto"
)

// The S3 tests run against a real S3-compatible server: versitygw, one
// process for the package, a bucket per test.

// s3Store opens a store on the test server for checking what arrived.
func s3Store(t *testing.T, cfg s3.Config) *s3.Store {
	t.Helper()
	st, err := s3.New(cfg)
	require.NoError(t, err)
	return st
}

func fetch(t *testing.T, url string) ([]byte, http.Header) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", data)
	return data, resp.Header
}

// TestS3Outputs is §9.2's BUCKET_ENDPOINT_URL row: outputs become s3_url
// items, keyed {BUCKET_PREFIX}/{job_id}/{filename} with ComfyUI's file
// name and the right content type, behind 7-day presigned URLs.
func TestS3Outputs(t *testing.T) {
	t.Parallel()
	srv := gw.Get(t)
	cfg := srv.Config(srv.Bucket(t))
	cfg.Prefix = "/outputs/"
	b := setup(t)
	b.startWorker("w1", worker.Config{}, workerOpts{s3: &cfg})
	b.enqueue("s3-job", input(sampler("1", 2)+save("9", "a")+`,
		"21":{"class_type":"CreateVideo","inputs":{"images":["8",0],"fps":24}},
		"22":{"class_type":"SaveVideo","inputs":{"video":["21",0],"filename_prefix":"video/clip","format":"auto","codec":"auto"}}`))
	rec := b.wait("s3-job", proto.StatusCompleted)
	out := b.output(rec)
	require.Len(t, out.Images, 1)
	require.Len(t, out.Videos, 1)
	require.Empty(t, out.Errors)

	img := out.Images[0]
	require.Equal(t, proto.ItemS3URL, img.Type)
	require.Equal(t, "a_00001_.png", img.Filename)
	require.Empty(t, img.Blob)
	require.Contains(t, img.Data, "/outputs/s3-job/a_00001_.png?")
	require.Contains(t, img.Data, "X-Amz-Expires=604800")
	data, hdr := fetch(t, img.Data)
	require.Equal(t, "image/png", hdr.Get("Content-Type"))
	require.Equal(t, []byte("\x89PNG"), data[:4])
	require.EqualValues(t, len(data), img.Size)

	vid := out.Videos[0]
	require.Equal(t, "clip_00001_.mp4", vid.Filename)
	data, hdr = fetch(t, vid.Data)
	require.Equal(t, "video/mp4", hdr.Get("Content-Type"))
	require.Equal(t, "ftyp", string(data[4:8]))

	st := s3Store(t, cfg)
	_, info, err := st.Get(ctxT(t), "s3-job/a_00001_.png")
	require.NoError(t, err)
	require.Equal(t, "outputs/s3-job/a_00001_.png", info.Key)
}

// TestS3ConfigOfTheRequest: a job's s3Config beats the worker's settings.
func TestS3PrefixOfTheJob(t *testing.T) {
	t.Parallel()
	srv := gw.Get(t)
	cfg := srv.Config(srv.Bucket(t))
	cfg.Prefix = "worker-prefix"
	b := setup(t)
	b.startWorker("w1", worker.Config{}, workerOpts{s3: &cfg})
	b.enqueueJob(&proto.Job{ID: "prefixed", Input: json.RawMessage(input(sampler("1", 2) + save("9", "a"))),
		Output: &proto.OutputSettings{S3Prefix: "batches/b1"}})
	rec := b.wait("prefixed", proto.StatusCompleted)
	out := b.output(rec)
	require.Len(t, out.Images, 1)
	require.Contains(t, out.Images[0].Data, "/batches/b1/prefixed/a_00001_.png?", "output.s3_prefix replaces BUCKET_PREFIX")

	jobCfg := cfg
	jobCfg.Prefix = "batches/b1"
	_, info, err := s3Store(t, jobCfg).Get(ctxT(t), "prefixed/a_00001_.png")
	require.NoError(t, err)
	require.Equal(t, "batches/b1/prefixed/a_00001_.png", info.Key)
}

// The endpoint is a loopback http one, so the worker must allow it
// (S3_CONFIG_ALLOW with its port, S3_CONFIG_ALLOW_HTTP).
func TestS3ConfigOfTheRequest(t *testing.T) {
	t.Parallel()
	srv := gw.Get(t)
	envCfg := srv.Config(srv.Bucket(t))
	own := srv.Bucket(t)
	b := setup(t)
	b.startWorker("w1", worker.Config{S3ConfigAllow: []string{strings.TrimPrefix(srv.Endpoint, "http://")}, S3ConfigAllowHTTP: true},
		workerOpts{s3: &envCfg})
	b.enqueueJob(&proto.Job{ID: "own-bucket", Input: []byte(input(sampler("1", 2) + save("9", "x"))),
		S3Config: &proto.S3Config{AccessID: srv.AccessKey, AccessSecret: srv.SecretKey, BucketName: own,
			EndpointURL: srv.Endpoint, ObjectPath: "custom/path"}})
	rec := b.wait("own-bucket", proto.StatusCompleted)
	item := b.output(rec).Images[0]
	require.Contains(t, item.Data, "/"+own+"/custom/path/own-bucket/x_00001_.png?")
	fetch(t, item.Data)
	_, _, err := s3Store(t, envCfg).Get(ctxT(t), "own-bucket/x_00001_.png")
	require.Error(t, err, "nothing in the worker's bucket")
	require.NotContains(t, string(rec.Output), srv.SecretKey)
}

// failingTransport makes S3 PUTs of keys containing fail fail, and those
// containing flaky fail once.
type failingTransport struct {
	base  http.RoundTripper
	mu    sync.Mutex
	flaky map[string]bool
}

func (f *failingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPut {
		f.mu.Lock()
		first := !f.flaky[r.URL.Path]
		if strings.Contains(r.URL.Path, "flaky") {
			f.flaky[r.URL.Path] = true
		}
		f.mu.Unlock()
		if strings.Contains(r.URL.Path, "fail_") || (strings.Contains(r.URL.Path, "flaky") && first) {
			if r.Body != nil {
				r.Body.Close()
			}
			return nil, errors.New("injected network failure")
		}
	}
	return f.base.RoundTrip(r)
}

// TestS3UploadFailures: an upload that keeps failing is reported in
// errors while the job's other outputs return; one that fails once is
// retried.
func TestS3UploadFailures(t *testing.T) {
	t.Parallel()
	srv := gw.Get(t)
	cfg := srv.Config(srv.Bucket(t))
	cfg.MaxAttempts = 1 // the worker's own retries are under test
	cfg.HTTPClient = &http.Client{Transport: &failingTransport{base: http.DefaultTransport, flaky: map[string]bool{}}}
	b := setup(t)
	b.startWorker("w1", worker.Config{}, workerOpts{s3: &cfg})
	b.enqueue("partial", input(sampler("1", 2)+save("9", "ok")+save("10", "fail")+save("11", "flaky")))
	rec := b.wait("partial", proto.StatusCompleted)
	out := b.output(rec)
	var names []string
	for _, it := range out.Images {
		names = append(names, it.Filename)
		fetch(t, it.Data)
	}
	require.Equal(t, []string{"ok_00001_.png", "flaky_00001_.png"}, names)
	require.Len(t, out.Errors, 1)
	require.True(t, strings.HasPrefix(out.Errors[0], "Error uploading fail_00001_.png to S3: put partial/fail_00001_.png: "), out.Errors[0])
	require.Contains(t, out.Errors[0], "injected network failure")
}

// TestS3LargeOutputStreams saves a 200 MB output and checks it arrives
// whole while the worker streams it: the heap is sampled during the job
// and its peak reported (the bound is a benchmark's business, not this
// test's).
func TestS3LargeOutputStreams(t *testing.T) {
	t.Parallel()
	const size = 200 << 20
	srv := gw.Get(t)
	cfg := srv.Config(srv.Bucket(t))
	b := setup(t, comfysim.Config{StepDelay: time.Millisecond, Dir: shmDir(t)})
	b.sim.SetFault(comfysim.Fault{PadOutputsTo: size})
	b.startWorker("w1", worker.Config{}, workerOpts{s3: &cfg})

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	start := time.Now()
	b.enqueue("big", input(sampler("1", 2)+save("9", "big")))
	rec := b.wait("big", proto.StatusCompleted)
	took := time.Since(start)
	close(stop)
	<-sampled
	t.Logf("200 MB output streamed to S3 in %v; heap in use: %.1f MB before, peak %.1f MB (+%.1f MB) — whole test process: worker, emulator and NATS",
		took, mb(base), mb(peak.Load()), mb(peak.Load())-mb(base))

	item := b.output(rec).Images[0]
	require.EqualValues(t, size, item.Size)
	r, info, err := s3Store(t, cfg).Get(context.Background(), "big/big_00001_.png")
	require.NoError(t, err)
	defer r.Close()
	require.EqualValues(t, size, info.Size)
	n, err := io.Copy(io.Discard, r)
	require.NoError(t, err)
	require.EqualValues(t, size, n)
}

func mb(b uint64) float64 { return float64(b) / (1 << 20) }
