package runpod_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/internal/runpod/runpodtest"
	"github.com/comfyfleet/comfyfleet/proto"
)

// TestStatusCodes pins every status code the API answers with, the error
// body ({"error": string}) and the content type, for each way a request
// can be wrong.
func TestStatusCodes(t *testing.T) {
	t.Parallel()
	s := startStack(t, runpod.Config{Keys: apiKeys(t, "k1"), MaxRunBody: 2048, MaxRunSyncBody: 4096}, 1, 0)
	auth := []string{"Authorization", "Bearer k1"}
	ok := string(runpodtest.Input(runpodtest.Mock{}))
	pad := `"pad":"` + strings.Repeat("x", 3000) + `"`
	id := s.run2(t, ok, auth)
	tests := []struct {
		name, method, path, body string
		header                   []string
		want                     int
		wantErr                  string
	}{
		{"empty body", "POST", "/run", "", auth, 400, "request body is empty"},
		{"body null", "POST", "/run", "null", auth, 400, "got JSON null, want an object"},
		{"malformed json", "POST", "/run", `{"input":`, auth, 400, "request body is not a JSON object: invalid JSON"},
		{"trailing data", "POST", "/run", `{"input":` + ok + `} {}`, auth, 400, "invalid JSON"},
		{"no input", "POST", "/run", `{"webhook":"http://h"}`, auth, 400, "Please provide input"},
		{"input wrong type", "POST", "/run", `{"input":5}`, auth, 400, "Input must be a JSON object, got a number"},
		{"no workflow", "POST", "/runsync", `{"input":{"prompt":"x"}}`, auth, 400, "Missing 'workflow' parameter"},
		{"webhook wrong type", "POST", "/run", `{"input":` + ok + `,"webhook":5}`, auth, 400, "webhook must be a string"},
		{"webhook not a url", "POST", "/run", `{"input":` + ok + `,"webhook":"ftp://x"}`, auth, 400, `webhook has the scheme "ftp"; give an http or https URL`},
		{"webhook a file", "POST", "/run", `{"input":` + ok + `,"webhook":"file:///etc/passwd"}`, auth, 400, `webhook has the scheme "file"; give an http or https URL`},
		{"webhook with credentials", "POST", "/run", `{"input":` + ok + `,"webhook":"https://u:secret-pw@h.example/x"}`, auth, 400, "webhook carries credentials"},
		{"webhook without host", "POST", "/run", `{"input":` + ok + `,"webhook":"https:/x"}`, auth, 400, "webhook has no host"},
		{"webhook too long", "POST", "/runsync", `{"input":` + ok + `,"webhook":"https://h.example/` + strings.Repeat("a", 2100) + `"}`, auth, 400, "webhook is 2118 bytes long, the limit is 2048"},
		{"policy wrong type", "POST", "/run", `{"input":` + ok + `,"policy":"fast"}`, auth, 400, "policy must be an object"},
		{"ttl wrong type", "POST", "/run", `{"input":` + ok + `,"policy":{"ttl":"1h"}}`, auth, 400, `policy.ttl must be a whole number of milliseconds from 10000 to 604800000, got "1h"`},
		{"ttl past int64", "POST", "/run", `{"input":` + ok + `,"policy":{"ttl":9223372036854775808}}`, auth, 400, "policy.ttl must be a whole number of milliseconds from 10000 to 604800000, got 9223372036854775808"},
		{"timeout max int64", "POST", "/run", `{"input":` + ok + `,"policy":{"executionTimeout":9223372036854775807}}`, auth, 400, "policy.executionTimeout is 9223372036854775807 ms, outside RunPod's range of 5000 ms to 604800000 ms (7 days)"},
		{"ttl far", "POST", "/run", `{"input":` + ok + `,"policy":{"ttl":9000000000000000}}`, auth, 400, "policy.ttl is 9000000000000000 ms, outside RunPod's range"},
		{"image name with RLO", "POST", "/run", `{"input":{"workflow":{},"images":[{"name":"x\u202egnp.exe","image":"AA=="}]}}`, auth, 400, `images[0].name: "x\u202egnp.exe" has the control or format character U+202E at byte 1`},
		{"ttl fractional", "POST", "/run", `{"input":` + ok + `,"policy":{"ttl":60000.5}}`, auth, 400, "policy.ttl must be a whole number"},
		{"ttl negative", "POST", "/run", `{"input":` + ok + `,"policy":{"ttl":-1}}`, auth, 400, "policy.ttl must not be negative"},
		{"ttl too short", "POST", "/run", `{"input":` + ok + `,"policy":{"ttl":5000}}`, auth, 400, "policy.ttl is 5000 ms, outside RunPod's range of 10000 ms"},
		{"timeout too long", "POST", "/run", `{"input":` + ok + `,"policy":{"executionTimeout":604800001}}`, auth, 400, "policy.executionTimeout is 604800001 ms"},
		{"lowPriority wrong type", "POST", "/run", `{"input":` + ok + `,"policy":{"lowPriority":"yes"}}`, auth, 400, "policy.lowPriority must be true or false"},
		{"s3Config wrong type", "POST", "/run", `{"input":` + ok + `,"s3Config":[]}`, auth, 400, "s3Config must be an object"},
		{"s3Config field wrong type", "POST", "/run", `{"input":` + ok + `,"s3Config":{"accessSecret":12345}}`, auth, 400, "s3Config.accessSecret must be a string, got a number"},
		{"bad wait", "POST", "/runsync?wait=soon", `{"input":` + ok + `}`, auth, 400, `wait="soon" is not a whole number`},
		{"bad ttl query", "GET", "/status/" + id + "?ttl=-5", "", auth, 400, `ttl="-5" is not a whole number of milliseconds from 1 to 2592000000`},
		{"ttl query past int64 ms", "GET", "/status/" + id + "?ttl=9223372036854775807", "", auth, 400, `ttl="9223372036854775807" is not a whole number of milliseconds from 1 to 2592000000 (30 days)`},
		{"bad job id", "GET", "/v2/ep/status/a.b", "", auth, 400, `job id: id "a.b" has the character '.'`},
		{"no key", "POST", "/run", `{"input":` + ok + `}`, nil, 401, "Unauthorized"},
		{"wrong key", "GET", "/v2/ep/health", "", []string{"Authorization", "Bearer k2"}, 401, "Unauthorized"},
		{"wrong bare key", "GET", "/v2/ep/status/" + id, "", []string{"Authorization", "k"}, 401, "Unauthorized"},
		{"unknown job status", "GET", "/v2/ep/status/nope", "", auth, 404, "job nope not found (unknown, or its result expired)"},
		{"unknown job status-sync", "POST", "/v2/ep/status-sync/nope", "", auth, 404, "job nope not found"},
		{"unknown job stream", "POST", "/v2/ep/stream/nope", "", auth, 404, "job nope not found"},
		{"unknown job cancel", "POST", "/v2/ep/cancel/nope", "", auth, 404, "job nope not found"},
		{"unknown job retry", "POST", "/v2/ep/retry/nope", "", auth, 404, "job nope not found"},
		{"unknown route", "GET", "/v2/ep/requests", "", auth, 404, "no such route: GET /v2/ep/requests"},
		{"wrong method", "GET", "/v2/ep/run", "", auth, 405, "method GET is not allowed on /v2/ep/run"},
		{"cancel is POST", "GET", "/v2/ep/cancel/" + id, "", auth, 405, "method GET is not allowed"},
		{"run above its limit", "POST", "/run", `{"input":` + ok + `,` + pad + `}`, auth, 413, "request body is larger than the 2048-byte limit of /run"},
		{"runsync above its limit", "POST", "/v2/ep/runsync?wait=1000", `{"input":` + ok + `,` + pad + pad + `}`, auth, 413, "larger than the 4096-byte limit of /v2/ep/runsync"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := s.call(t, 0, tt.method, tt.path, tt.body, tt.header...)
			require.Equal(t, tt.want, code, "%v", out)
			msg, isString := out["error"].(string)
			require.True(t, isString, "error is a string: %v", out)
			require.Contains(t, msg, tt.wantErr)
		})
	}
	// Between the two limits /runsync takes what /run refuses.
	code, out := s.call(t, 0, "POST", "/v2/ep/runsync?wait=1000", `{"input":`+ok+`,`+pad+`}`, auth...)
	require.Equal(t, http.StatusOK, code, "%v", out)
	require.Equal(t, "IN_QUEUE", out["status"])
}

// run2 is run with headers.
func (s *stack) run2(t *testing.T, input string, header []string) string {
	t.Helper()
	code, out := s.call(t, 0, "POST", "/run", `{"input":`+input+`}`, header...)
	require.Equal(t, http.StatusOK, code, "%v", out)
	return out["id"].(string)
}

func TestBackpressureAnswers429(t *testing.T) {
	t.Parallel()
	s := startStack(t, runpod.Config{MaxQueued: 2}, 1, 0)
	body := `{"input":` + string(runpodtest.Input(runpodtest.Mock{})) + `}`
	var last map[string]any
	require.Eventually(t, func() bool {
		var code int
		code, last = s.call(t, 0, "POST", "/run", body)
		return code == http.StatusTooManyRequests
	}, 20*time.Second, 50*time.Millisecond, "no worker drains the queue, so it fills")
	require.Contains(t, last["error"], "the queue is full")
	code, out := s.call(t, 0, "POST", "/runsync?wait=1000", body)
	require.Equal(t, http.StatusTooManyRequests, code, "%v", out)
}

// TestSecretsNeverLeave runs a job with s3Config and a comfy_org_api_key
// through every route and checks that neither ever comes back in an
// answer, reaches Redis, or a log line, while the worker gets both.
func TestSecretsNeverLeave(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.DebugLevel)
	s := startStackLogging(t, runpod.Config{}, 1, 1, zap.New(core))
	const secret, keyID = "S3-SECRET-VALUE", "AKIA-ID-VALUE"
	var in map[string]any
	require.NoError(t, json.Unmarshal(runpodtest.Input(runpodtest.Mock{Error: "boom"}), &in))
	in["comfy_org_api_key"] = "COMFY-ORG-KEY"
	input, _ := json.Marshal(in)
	body := `{"input":` + string(input) + `,"webhook":"https://hook.example/x","s3Config":{"accessId":"` + keyID + `","accessSecret":"` + secret + `","bucketName":"b","endpointUrl":"https://s3.example"}}`
	var answers []string
	code, raw := s.raw(t, 0, "POST", "/runsync?wait=20000", body)
	require.Equal(t, http.StatusOK, code)
	answers = append(answers, string(raw))
	var out map[string]any
	require.NoError(t, json.Unmarshal(raw, &out))
	id := out["id"].(string)
	for _, p := range []string{"/status/", "/status-sync/", "/stream/", "/retry/", "/cancel/"} {
		_, raw := s.raw(t, 0, "POST", p+id, "")
		answers = append(answers, string(raw))
	}
	_, raw = s.raw(t, 0, "POST", "/run", body)
	answers = append(answers, string(raw))
	require.Eventually(t, func() bool {
		rec, err := s.fleet.DB.Get(context.Background(), id)
		return err == nil && rec.Retries == 1 && rec.Status.Terminal()
	}, 20*time.Second, 20*time.Millisecond, "the retry ran or was cancelled")

	jobs := s.workers[0].Jobs()
	require.NotEmpty(t, jobs)
	require.Equal(t, secret, jobs[0].S3Config.AccessSecret, "the worker gets the s3Config")
	require.Equal(t, "https://hook.example/x", jobs[0].Webhook, "and the webhook")
	require.Contains(t, string(jobs[0].Input), "COMFY-ORG-KEY")

	keys, err := s.fleet.Redis.Keys(context.Background(), s.fleet.Prefix+"*").Result()
	require.NoError(t, err)
	for _, k := range keys {
		dump, _ := s.fleet.Redis.Dump(context.Background(), k).Result()
		for _, v := range []string{secret, keyID, "COMFY-ORG-KEY"} {
			require.NotContains(t, dump, v, "Redis key %s", k)
		}
	}
	for _, a := range answers {
		for _, v := range []string{secret, keyID, "COMFY-ORG-KEY"} {
			require.NotContains(t, a, v)
		}
	}
	for _, e := range logs.All() {
		line, _ := json.Marshal(map[string]any{"m": e.Message, "f": e.ContextMap()})
		for _, v := range []string{secret, keyID, "COMFY-ORG-KEY"} {
			require.NotContains(t, string(line), v)
		}
	}
}

// TestRetention checks how long results are kept: RunPod's 30 minutes
// after /run and 1 minute after /runsync, and /status?ttl= shortening it.
func TestRetention(t *testing.T) {
	t.Parallel()
	s := startStack(t, runpod.Config{}, 1, 1)
	ctx := context.Background()
	pttl := func(id string) time.Duration {
		d, err := s.fleet.Redis.PTTL(ctx, s.fleet.Prefix+proto.JobKey(id)).Result()
		require.NoError(t, err)
		return d
	}
	id := s.run(t, runpodtest.Input(runpodtest.Mock{}))
	s.fleet.WaitStatus(t, id, proto.StatusCompleted)
	require.InDelta(t, 30*time.Minute, pttl(id), float64(time.Minute))

	_, out := s.call(t, 0, "POST", "/runsync", `{"input":`+string(runpodtest.Input(runpodtest.Mock{}))+`}`)
	require.Equal(t, "COMPLETED", out["status"])
	require.InDelta(t, time.Minute, pttl(out["id"].(string)), float64(10*time.Second))

	code, out := s.call(t, 0, "GET", "/status/"+id+"?ttl=5000", "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "COMPLETED", out["status"])
	require.LessOrEqual(t, pttl(id), 5*time.Second)

	// A policy ttl reaches the record of a job that is not finished.
	_, out = s.call(t, 0, "POST", "/run", `{"input":`+string(runpodtest.Input(runpodtest.Mock{Hold: true}))+`,"policy":{"ttl":60000,"executionTimeout":5000,"lowPriority":false}}`)
	held := out["id"].(string)
	s.fleet.WaitStatus(t, held, proto.StatusInProgress)
	require.InDelta(t, time.Minute+time.Hour, pttl(held), float64(time.Minute), "ttl plus the record's slack")
	s.call(t, 0, "POST", "/cancel/"+held, "")
}

// TestClientRequestShapes replays the requests RunPod's three SDKs send
// (runpod-protocol.md Appendix A and §D), headers and all, and checks each
// gets exactly 200 with application/json and the fields its SDK reads.
func TestClientRequestShapes(t *testing.T) {
	t.Parallel()
	s := startStack(t, runpod.Config{Keys: apiKeys(t, "client-key")}, 1, 1)
	in := string(runpodtest.Input(runpodtest.Mock{Progress: 2, DelayMS: 20}))
	py := []string{"Authorization", "Bearer client-key", "User-Agent", "python-requests/2.28.1"}
	js := []string{"Authorization", "Bearer client-key", "User-Agent", "RunPod-JS-SDK/1.1.2 (Unknown Environment)"}
	bare := []string{"Authorization", "client-key", "Accept", "application/json"}

	// Python: run with webhook and policy, status, runsync without wait,
	// stream, cancel without a body, health, purge-queue without a body.
	code, out := s.call(t, 0, "POST", "/v2/ep1/run", `{"input":`+in+`,"webhook":"http://hook","policy":{"ttl":60000}}`, py...)
	require.Equal(t, 200, code)
	require.Equal(t, "IN_QUEUE", out["status"])
	id := out["id"].(string)
	code, out = s.call(t, 0, "GET", "/v2/ep1/status/"+id, "", py...)
	require.Equal(t, 200, code)
	require.Contains(t, []any{"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}, out["status"])
	code, out = s.call(t, 0, "POST", "/v2/ep1/runsync", `{"input":`+in+`}`, py...)
	require.Equal(t, 200, code)
	require.Equal(t, "COMPLETED", out["status"])
	code, out = s.call(t, 0, "GET", "/v2/ep1/stream/"+id, "", py...)
	require.Equal(t, 200, code)
	require.Contains(t, out, "stream")
	code, _ = s.call(t, 0, "POST", "/v2/ep1/cancel/"+id, "", py...)
	require.Equal(t, 200, code)
	code, out = s.call(t, 0, "GET", "/v2/ep1/health", "", py...)
	require.Equal(t, 200, code)
	require.Contains(t, out, "jobs")
	require.Contains(t, out, "workers")
	code, out = s.call(t, 0, "POST", "/v2/ep1/purge-queue", "", py...)
	require.Equal(t, 200, code)
	require.Equal(t, "completed", out["status"])

	// JS: runsync?wait, status-sync?wait (GET), stream, cancel {}, purge {}.
	code, out = s.call(t, 0, "POST", "/v2/ep1/runsync?wait=5000", `{"input":`+in+`,"policy":{"executionTimeout":5000,"lowPriority":true,"ttl":60000},"s3Config":{"accessId":"a","accessSecret":"s","bucketName":"b","endpointUrl":"https://e"}}`, js...)
	require.Equal(t, 200, code)
	id = out["id"].(string)
	code, out = s.call(t, 0, "GET", "/v2/ep1/status-sync/"+id+"?wait=4956", "", js...)
	require.Equal(t, 200, code)
	require.Equal(t, "COMPLETED", out["status"])
	code, out = s.call(t, 0, "GET", "/v2/ep1/stream/"+id, "", js...)
	require.Equal(t, 200, code)
	require.Equal(t, "COMPLETED", out["status"])
	code, _ = s.call(t, 0, "POST", "/v2/ep1/cancel/"+id, "{}", js...)
	require.Equal(t, 200, code)
	code, _ = s.call(t, 0, "POST", "/v2/ep1/purge-queue", "{}", js...)
	require.Equal(t, 200, code)

	// Go: POST status, POST status-sync?wait, POST stream?wait, bare key.
	for _, p := range []string{"/status/" + id, "/status-sync/" + id + "?wait=90000", "/stream/" + id + "?wait=1000"} {
		code, out = s.call(t, 0, "POST", "/v2/ep1"+p, "", bare...)
		require.Equal(t, 200, code, p)
		require.Equal(t, "COMPLETED", out["status"])
	}
	// Doubled slashes from a base URL given with a trailing slash.
	code, _ = s.call(t, 0, "GET", "/v2/ep1//status/"+id, "", bare...)
	require.Equal(t, 200, code)
}
