package runpod_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/auth"
	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

type bundle struct {
	url   string
	nats  *testenv.NATS
	blobs blob.Store
	db    *rdb.DB
}

// setup serves the API over real NATS and Redis, with no dispatcher and no
// workers: what the API itself answers.
func setup(t *testing.T, cfg runpod.Config) *bundle {
	t.Helper()
	n := testenv.StartNATS(t)
	client, prefix := testenv.Redis(t)
	q, err := queue.New(n.Conn)
	require.NoError(t, err)
	require.NoError(t, q.Ensure(testenv.Context(t, 30*time.Second), queue.Config{}))
	log := zaptest.NewLogger(t)
	db := rdb.New(client, rdb.Options{Prefix: prefix})
	api := runpod.NewAPI(cfg, runpod.Deps{Queue: q, Core: lifecycle.New(db, q, log), DB: db, Blobs: q.Blobs(), Logger: log})
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)
	return &bundle{url: srv.URL, nats: n, blobs: q.Blobs(), db: db}
}

// apiKeys is a keyring of API keys (tenants).
func apiKeys(t *testing.T, keys ...string) *auth.Keyring {
	t.Helper()
	k, err := auth.ParseKeyring(map[auth.Role][]string{auth.Tenant: keys})
	require.NoError(t, err)
	return k
}

func (b *bundle) do(t *testing.T, method, path, body string, header ...string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, b.url+path, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"), "%s %s", method, path)
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var out map[string]any
	require.NoError(t, json.Unmarshal(data, &out), "body %s", data)
	return resp.StatusCode, out
}

// submitted returns the job message the API put on the intake stream for
// the default tenant.
func (b *bundle) submitted(t *testing.T, id string) *proto.Job {
	t.Helper()
	return b.submittedAs(t, proto.DefaultTenant, id)
}

// submittedAs returns the last job message the API put on the intake
// stream for tenant, which must be job id's.
func (b *bundle) submittedAs(t *testing.T, tenant, id string) *proto.Job {
	t.Helper()
	s, err := b.nats.JS.Stream(context.Background(), proto.SubmitStream)
	require.NoError(t, err)
	m, err := s.GetLastMsgForSubject(context.Background(), proto.SubmitSubject(proto.SourceAPI, tenant))
	require.NoError(t, err)
	require.Equal(t, id, m.Header.Get(proto.MsgIDHeader))
	job, err := proto.DecodeJob(m.Data)
	require.NoError(t, err)
	return job
}

const workflow = `{"3":{"class_type":"KSampler","inputs":{"seed":18446744073709551615}},"9":{"class_type":"SaveImage","inputs":{"images":["8",0]}}}`

func TestRunQueuesAndStatusAnswers(t *testing.T) {
	t.Parallel()
	b := setup(t, runpod.Config{})
	for _, prefix := range []string{"", "/v2/my-endpoint"} {
		code, out := b.do(t, "POST", prefix+"/run", `{"input":{"workflow":`+workflow+`},"policy":{"ttl":60000}}`)
		require.Equal(t, http.StatusOK, code)
		require.Equal(t, "IN_QUEUE", out["status"])
		id := out["id"].(string)
		require.NoError(t, proto.ValidID(id))

		job := b.submitted(t, id)
		require.Contains(t, string(job.Input), "18446744073709551615", "the workflow travels byte for byte")
		require.Equal(t, int64(60000), job.Policy.TTL)
		require.Equal(t, proto.LaneInteractive, job.Lane)

		for _, method := range []string{"GET", "POST"} {
			code, out = b.do(t, method, prefix+"/status/"+id, "")
			require.Equal(t, http.StatusOK, code)
			require.Equal(t, id, out["id"])
			require.Equal(t, "IN_QUEUE", out["status"])
		}
	}
}

func TestRejectsBadRequests(t *testing.T) {
	t.Parallel()
	b := setup(t, runpod.Config{MaxRunBody: 1024})
	tests := []struct {
		name, method, path, body string
		wantCode                 int
		wantErr                  string
	}{
		{name: "no workflow", method: "POST", path: "/run", body: `{"input":{}}`, wantCode: 400, wantErr: "Missing 'workflow' parameter"},
		{name: "no input", method: "POST", path: "/runsync", body: `{}`, wantCode: 400, wantErr: "Please provide input"},
		{name: "input string not json", method: "POST", path: "/run", body: `{"input":"nope"}`, wantCode: 400, wantErr: "Invalid JSON format in input"},
		{name: "bad images", method: "POST", path: "/run", body: `{"input":{"workflow":{},"images":[{"name":"a.png"}]}}`, wantCode: 400, wantErr: "'images' must be a list of objects with 'name' and 'image' keys"},
		{name: "UI-format workflow", method: "POST", path: "/run", body: `{"input":{"workflow":{"last_node_id":9,"nodes":[{"id":9,"type":"SaveImage"}],"links":[]}}}`, wantCode: 400, wantErr: "'workflow': " + proto.ErrMsgUIWorkflow},
		{name: "UI-format workflow to runsync", method: "POST", path: "/v2/ep/runsync", body: `{"input":{"workflow":{"nodes":[],"links":[]}}}`, wantCode: 400, wantErr: "export it in API format (Workflow > Export (API))"},
		{name: "body not json", method: "POST", path: "/run", body: `{"input":`, wantCode: 400, wantErr: "request body is not a JSON object: invalid JSON at byte"},
		{name: "body an array", method: "POST", path: "/run", body: `[]`, wantCode: 400, wantErr: "request body is not a JSON object: got JSON array, want an object"},
		{name: "too large", method: "POST", path: "/run", body: `{"input":{"workflow":{"x":"` + strings.Repeat("a", 2000) + `"}}}`, wantCode: 413, wantErr: "request body is larger than the 1024-byte limit"},
		{name: "negative ttl", method: "POST", path: "/run", body: `{"input":{"workflow":{}},"policy":{"ttl":-5}}`, wantCode: 400, wantErr: "must not be negative"},
		{name: "bad wait", method: "POST", path: "/runsync?wait=soon", body: `{"input":{"workflow":{}}}`, wantCode: 400, wantErr: `wait="soon" is not a whole number`},
		{name: "unknown job", method: "GET", path: "/status/no-such-job", wantCode: 404, wantErr: "job no-such-job not found"},
		{name: "bad job id", method: "GET", path: "/status/a.b", wantCode: 400, wantErr: "job id: id \"a.b\" has the character '.'"},
		{name: "unknown route", method: "GET", path: "/v2/ep/nope", wantCode: 404, wantErr: "no such route: GET /v2/ep/nope"},
		{name: "wrong method", method: "GET", path: "/run", wantCode: 405, wantErr: "method GET is not allowed on /run"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := b.do(t, tt.method, tt.path, tt.body)
			require.Equal(t, tt.wantCode, code)
			require.Contains(t, out["error"], tt.wantErr)
		})
	}
	// Nothing of the rejected requests reached the queue.
	s, err := b.nats.JS.Stream(context.Background(), proto.SubmitStream)
	require.NoError(t, err)
	info, err := s.Info(context.Background())
	require.NoError(t, err)
	require.Zero(t, info.State.Msgs)
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	b := setup(t, runpod.Config{Keys: apiKeys(t, "k1", "k2")})
	tests := []struct {
		name, header string
		want         int
	}{
		{name: "none", header: "", want: 401},
		{name: "bearer", header: "Bearer k2", want: 200},
		{name: "bare key", header: "k1", want: 200},
		{name: "lower-case bearer", header: "bearer k1", want: 200},
		{name: "wrong", header: "Bearer k3", want: 401},
		{name: "prefix of a key", header: "Bearer k", want: 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := b.do(t, "GET", "/v2/ep/health", "", "Authorization", tt.header)
			require.Equal(t, tt.want, code, "%v", out)
		})
	}
}

func TestHealth(t *testing.T) {
	t.Parallel()
	b := setup(t, runpod.Config{})
	code, _ := b.do(t, "POST", "/run", `{"input":{"workflow":{}}}`)
	require.Equal(t, 200, code)
	code, out := b.do(t, "GET", "/health", "")
	require.Equal(t, 200, code)
	jobs := out["jobs"].(map[string]any)
	require.Equal(t, float64(1), jobs["inQueue"])
	require.Equal(t, float64(0), jobs["inProgress"])
	workers := out["workers"].(map[string]any)
	for _, k := range []string{"idle", "initializing", "ready", "running", "throttled", "unhealthy"} {
		require.Contains(t, workers, k)
	}
}

func TestLargeImagesGoToTheBlobStore(t *testing.T) {
	t.Parallel()
	b := setup(t, runpod.Config{InlineBlobMax: 1024})
	big := bytes.Repeat([]byte{0x89, 'P', 'N', 'G'}, 1000)
	small := []byte("tiny")
	body := `{"input":{"workflow":` + workflow + `,"images":[` +
		`{"name":"big.png","image":"data:image/png;base64,` + base64.StdEncoding.EncodeToString(big) + `"},` +
		`{"name":"small.png","image":"` + base64.StdEncoding.EncodeToString(small) + `"}]}}`
	code, out := b.do(t, "POST", "/run", body)
	require.Equal(t, 200, code, "%v", out)
	job := b.submitted(t, out["id"].(string))
	require.Less(t, len(job.Input), 2048, "the message stays small")
	in, err := proto.DecodeInput(job.Input)
	require.NoError(t, err)
	require.Contains(t, string(in.Workflow), "18446744073709551615")
	require.Len(t, in.Images, 2)
	require.Empty(t, in.Images[0].Image)
	r, _, err := b.blobs.Get(context.Background(), in.Images[0].Blob)
	require.NoError(t, err)
	got, err := io.ReadAll(r)
	r.Close()
	require.NoError(t, err)
	require.Equal(t, big, got)
	require.Equal(t, base64.StdEncoding.EncodeToString(small), in.Images[1].Image, "small images stay inline")

	code, out = b.do(t, "POST", "/run", `{"input":{"workflow":{},"images":[{"name":"x.png","image":"`+strings.Repeat("A", 1500)+`B"}]}}`)
	require.Equal(t, 400, code)
	require.Contains(t, out["error"], "Error decoding base64 for x.png")
}

// TestOversizeJobMessageIs413: a job whose message cannot fit in a NATS
// message (its workflow alone is larger) is refused with 413 and a message
// that gives the size, the limit and what to do, so a client does not
// retry it for ever as it did the old 503 "backend unavailable"; nothing
// is queued.
func TestOversizeJobMessageIs413(t *testing.T) {
	t.Parallel()
	b := setup(t, runpod.Config{})
	big := `{"9":{"class_type":"SaveImage","inputs":{"pad":"` + strings.Repeat("x", 1200<<10) + `"}}}`
	for _, path := range []string{"/run", "/v2/ep/runsync?wait=2000"} {
		code, out := b.do(t, "POST", path, `{"input":{"workflow":`+big+`}}`)
		require.Equal(t, http.StatusRequestEntityTooLarge, code, "%s: %v", path, out)
		msg := out["error"].(string)
		require.Regexp(t, `^the job message is \d+ bytes, more than the \d+ bytes a NATS message may carry`, msg)
		require.Contains(t, msg, "max_payload, 1 MB by default")
		require.Contains(t, msg, "make them smaller, pass large data as input images or by URL, or raise max_payload on the NATS server")
	}
	s, err := b.nats.JS.Stream(context.Background(), proto.SubmitStream)
	require.NoError(t, err)
	info, err := s.Info(context.Background())
	require.NoError(t, err)
	require.Zero(t, info.State.Msgs, "nothing was queued")
}

// TestManySmallImagesFitTheMessage: images each under the inline size but
// together over NATS's 1 MB go to the blob store, the largest first, until
// the message fits; the job is accepted.
func TestManySmallImagesFitTheMessage(t *testing.T) {
	t.Parallel()
	b := setup(t, runpod.Config{})
	var imgs []string
	var want [][]byte
	for i := range 6 { // 6 × ~240 KB of base64, each under the 256 KB inline size
		data := bytes.Repeat([]byte{byte('a' + i)}, 180<<10+i)
		want = append(want, data)
		imgs = append(imgs, `{"name":"i`+string(rune('0'+i))+`.png","image":"`+base64.StdEncoding.EncodeToString(data)+`"}`)
	}
	code, out := b.do(t, "POST", "/run", `{"input":{"workflow":`+workflow+`,"images":[`+strings.Join(imgs, ",")+`]}}`)
	require.Equal(t, http.StatusOK, code, "%v", out)
	job := b.submitted(t, out["id"].(string))
	in, err := proto.DecodeInput(job.Input)
	require.NoError(t, err)
	require.Len(t, in.Images, 6)
	moved := 0
	for i, img := range in.Images {
		if img.Blob == "" {
			require.Equal(t, base64.StdEncoding.EncodeToString(want[i]), img.Image)
			continue
		}
		moved++
		r, _, err := b.blobs.Get(context.Background(), img.Blob)
		require.NoError(t, err)
		got, err := io.ReadAll(r)
		r.Close()
		require.NoError(t, err)
		require.Equal(t, want[i], got)
	}
	require.Equal(t, 2, moved, "the two largest moved, which is enough to fit")
	require.Empty(t, in.Images[5].Image, "the largest moved first")
	require.Contains(t, string(in.Workflow), "18446744073709551615")
}

func TestRunSyncAnswersInFlightViewAfterWait(t *testing.T) {
	t.Parallel()
	b := setup(t, runpod.Config{})
	start := time.Now()
	code, out := b.do(t, "POST", "/v2/ep/runsync?wait=1000", `{"input":{"workflow":{}}}`)
	require.Equal(t, 200, code)
	require.Equal(t, "IN_QUEUE", out["status"])
	require.True(t, strings.HasPrefix(out["id"].(string), "sync-"))
	require.GreaterOrEqual(t, time.Since(start), time.Second, "waited for ?wait=1000")
}

func TestDoubleSlashesAreForgiven(t *testing.T) {
	t.Parallel()
	b := setup(t, runpod.Config{})
	code, out := b.do(t, "POST", "/v2/ep//run", `{"input":{"workflow":{}}}`)
	require.Equal(t, 200, code, "%v", out)
}

// /status answers how the job's webhook delivery ended as an extra
// field, once it ended; RunPod's fields are as they were, and a job
// without one has none.
func TestStatusShowsWebhookOutcome(t *testing.T) {
	t.Parallel()
	b := setup(t, runpod.Config{})
	ctx := testenv.Context(t, 30*time.Second)
	code, out := b.do(t, "POST", "/run", `{"input":{"workflow":`+workflow+`},"webhook":"https://hooks.example/done"}`)
	require.Equal(t, http.StatusOK, code)
	id := out["id"].(string)
	c, err := b.db.Claim(ctx, rdb.ClaimParams{ID: id, WorkerID: "w1", LeaseTTL: time.Minute})
	require.NoError(t, err)
	rec, err := b.db.Finish(ctx, id, c.Lease.Attempt, proto.StatusFailed, nil, "boom", false)
	require.NoError(t, err)
	_, out = b.do(t, "GET", "/status/"+id, "")
	require.NotContains(t, out, "webhook", "not while the delivery runs")

	ok, err := b.db.PutWebhookOutcome(ctx, id, rec.FinishedAt, proto.WebhookOutcome{Attempts: 3, LastStatus: 503, Error: "answered 503 Service Unavailable"})
	require.NoError(t, err)
	require.True(t, ok)
	code, out = b.do(t, "GET", "/status/"+id, "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "FAILED", out["status"])
	require.Equal(t, "boom", out["error"])
	require.Equal(t, map[string]any{"delivered": false, "attempts": float64(3), "lastStatus": float64(503), "error": "answered 503 Service Unavailable"}, out["webhook"])
}
