package jobtake_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/auth"
	"github.com/comfyfleet/comfyfleet/internal/runpod/jobtake"
	"github.com/comfyfleet/comfyfleet/proto"
)

// raw sends one request as the Python SDK would, target byte for byte.
func (b *bundle) raw(t *testing.T, method, target, body string, header ...string) (int, http.Header, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, b.url+target, rd)
	require.NoError(t, err)
	req.Header.Set("Authorization", workerKey)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header, data
}

const png1x1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="

// TestWhatTheSDKSends replays the quirks of §A.3–A.4 and §A.12 by hand:
// parameters appended to the path of a template without "?", the literal
// $RUNPOD_POD_ID, a form content type over JSON, a sticky X-Request-ID
// naming another job, comma-joined job ids in a ping.
func TestWhatTheSDKSends(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, nil)
	form := []string{"Content-Type", "application/x-www-form-urlencoded", "charset", "utf-8", "X-Request-ID", "job-ok"}

	code, _, body := b.raw(t, "GET", "/v2/ep1/job-take/$RUNPOD_POD_ID&job_in_progress=0", "")
	require.Equal(t, http.StatusNoContent, code, "nothing queued: 204 after the hold")
	require.Empty(t, body)

	a := b.run(t, `"mock_return":1`)
	c := b.run(t, `"mock_return":2`)
	b.fleet.WaitStatus(t, c, proto.StatusInQueue)
	// Both are handed out, in one batch or (when the second is not yet
	// admitted) in two.
	var jobs []map[string]json.RawMessage
	for len(jobs) < 2 {
		code, hdr, body := b.raw(t, "GET", "/v2/ep1/job-take-batch/$RUNPOD_POD_ID&batch_size=2&job_in_progress=0", "", "Content-Type", "application/json")
		if code == http.StatusNoContent {
			continue
		}
		require.Equal(t, http.StatusOK, code, "%s", body)
		require.Equal(t, "application/json", hdr.Get("Content-Type"))
		var got []map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(body, &got), "a batch is an array")
		jobs = append(jobs, got...)
	}
	require.Len(t, jobs, 2)
	for i, id := range []string{a, c} {
		require.JSONEq(t, `"`+id+`"`, string(jobs[i]["id"]))
		require.Contains(t, string(jobs[i]["input"]), `"mock_return":`)
		rec := b.fleet.WaitStatus(t, id, proto.StatusInProgress)
		require.True(t, strings.HasPrefix(rec.WorkerID, "rp-worker-"), "the literal $RUNPOD_POD_ID is not a fleet id; it gets a stable one: %s", rec.WorkerID)
	}

	// A ping naming both (comma-joined, %2C) plus one it does not hold.
	code, _, _ = b.raw(t, "GET", "/v2/ep1/ping/worker-1?gpu=TEST&job_id="+a+"%2C"+c+"%2Cnot-held&runpod_version=1.12.0", "",
		"User-Agent", "python-requests/2.28.1")
	require.Equal(t, http.StatusOK, code)

	// A stream chunk and the result of a, each naming job-ok in the
	// sticky header: the path decides.
	code, _, body = b.raw(t, "POST", "/v2/ep1/job-stream/worker-1/"+a+"&isStream=false", `{"output": {"i": 0}}`, form...)
	require.Equal(t, http.StatusOK, code, "%s", body)
	code, _, body = b.raw(t, "POST", "/v2/ep1/job-done/worker-1/"+a+"&isStream=false",
		`{"output": {"images": [{"filename": "a.png", "type": "base64", "data": "`+png1x1+`"}]}}`, form...)
	require.Equal(t, http.StatusOK, code, "%s", body)
	rec := b.fleet.WaitStatus(t, a, proto.StatusCompleted)
	require.NotContains(t, string(rec.Output), png1x1, "the file's bytes went to the blob store, not Redis")
	_, out := b.call(t, "GET", "/v2/ep1/status/"+a, "")
	img := out["output"].(map[string]any)["images"].([]any)[0].(map[string]any)
	require.Equal(t, png1x1, img["data"], "and come back inline")
	require.Equal(t, "a.png", img["filename"])
	_, out = b.call(t, "GET", "/v2/ep1/stream/"+a, "")
	require.Equal(t, []any{map[string]any{"output": map[string]any{"i": float64(0)}}}, out["stream"])
	_, out = b.call(t, "GET", "/v2/ep1/status/"+c, "")
	require.Equal(t, "IN_PROGRESS", out["status"], "c is untouched")

	// c is cancelled: the worker's stop poll names it.
	b.call(t, "POST", "/v2/ep1/cancel/"+c, "")
	code, _, body = b.raw(t, "GET", "/v2/ep1/job-stop/$RUNPOD_POD_ID", "")
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"jobsToStop":["`+c+`"]}`, string(body))
	code, _, _ = b.raw(t, "GET", "/v2/ep1/job-stop/$RUNPOD_POD_ID", "")
	require.Equal(t, http.StatusNoContent, code, "told once")

	// Refusals.
	code, _, _ = b.raw(t, "POST", "/v2/ep1/job-done/worker-1/"+a+"&isStream=false", `not json`, form...)
	require.Equal(t, http.StatusBadRequest, code, "4xx: the SDK drops it")
	code, _, _ = b.raw(t, "POST", "/v2/ep1/job-done/worker-1/never-taken?gpu=TEST&isStream=false", `{"output": 1}`, form...)
	require.Equal(t, http.StatusNotFound, code)
	code, _, _ = b.raw(t, "GET", "/v2/ep1/ping/worker-1", "", "Authorization", "wrong")
	require.Equal(t, http.StatusUnauthorized, code)
	code, _, _ = b.raw(t, "GET", "/v2/ep1/ping/worker-1", "", "Authorization", "Bearer "+workerKey)
	require.Equal(t, http.StatusOK, code, "Bearer is accepted too")
}

// TestFitnessReportMarksTheWorkerUnhealthy: §A.12.2.
func TestFitnessReportMarksTheWorkerUnhealthy(t *testing.T) {
	t.Parallel()
	b := setup(t, 1, nil)
	code, _, _ := b.raw(t, "GET", "/v2/ep1/ping/worker-9?gpu=TEST&status=unhealthy&check=check_gpu&reason=no+GPU&runpod_version=1.12.0", "")
	require.Equal(t, http.StatusOK, code)
	ws, err := b.fleet.DB.Workers(context.Background())
	require.NoError(t, err)
	require.Len(t, ws, 1)
	require.Equal(t, "unhealthy", ws[0].State)
}

func TestDecodeResult(t *testing.T) {
	t.Parallel()
	tests := []struct {
		body string
		want jobtake.Result
	}{
		{`{"output": {"a": 1}}`, jobtake.Result{Output: json.RawMessage(`{"a": 1}`)}},
		{`{"output": {"x": 1}, "error": "bad thing"}`, jobtake.Result{Output: json.RawMessage(`{"x": 1}`), Error: "bad thing"}},
		{`{"error": {"code": 7}}`, jobtake.Result{Error: `{"code": 7}`}},
		{`{"error": null, "output": 1}`, jobtake.Result{Output: json.RawMessage(`1`)}},
		{`{"status": "IN_PROGRESS", "output": {"pct": 50}}`, jobtake.Result{Progress: true, Output: json.RawMessage(`{"pct": 50}`)}},
		{`{"output": {"v": 1}, "stopPod": true}`, jobtake.Result{Output: json.RawMessage(`{"v": 1}`), StopPod: true}},
		{`{"output": null}`, jobtake.Result{Output: json.RawMessage(`null`)}},
	}
	for _, tt := range tests {
		got, err := jobtake.DecodeResult([]byte(tt.body))
		require.NoError(t, err, tt.body)
		require.Equal(t, tt.want, *got, tt.body)
	}
	for _, bad := range []string{``, `null`, `[1]`, `"x"`, `{"output":`} {
		_, err := jobtake.DecodeResult([]byte(bad))
		require.Error(t, err, bad)
	}
}

func FuzzDecodeResult(f *testing.F) {
	for _, s := range []string{`{"output": {"a": 1}}`, `{"status": "IN_PROGRESS", "output": 5}`, `{"error": {"e": 1}, "stopPod": "yes"}`, `{"error": false}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := jobtake.DecodeResult(body)
		if err != nil {
			return
		}
		if r.Output != nil && !json.Valid(r.Output) {
			t.Fatalf("output %q is not JSON", r.Output)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	require.ErrorContains(t, jobtake.Config{}.Validate(), "worker keys are required")
	apiOnly, err := auth.ParseKeyring(map[auth.Role][]string{auth.Tenant: {"acme:k"}})
	require.NoError(t, err)
	require.ErrorContains(t, jobtake.Config{Keys: apiOnly}.Validate(), "worker keys are required", "API keys never work there")
	keys, err := auth.ParseKeyring(map[auth.Role][]string{auth.Worker: {"w"}})
	require.NoError(t, err)
	require.NoError(t, jobtake.Config{Keys: keys}.Validate())
	require.ErrorContains(t, jobtake.Config{Keys: keys, TakeHold: 90 * time.Second}.Validate(), "under the RunPod SDK's 90 s")
	require.ErrorContains(t, jobtake.Config{Keys: keys, Pool: "a b"}.Validate(), "pool")
	require.ErrorContains(t, jobtake.Config{Keys: keys, LeaseTimeout: -1}.Validate(), "negative")
	require.ErrorContains(t, jobtake.Config{Keys: keys, AllowedOrigins: []string{"nope"}}.Validate(), "allowed origin")
}
