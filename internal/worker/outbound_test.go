package worker_test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/internal/worker"
	"github.com/comfyfleet/comfyfleet/proto"
)

// The outside URLs a job names (its s3Config endpoint, its input URLs) go
// through the SSRF guard: these tests replay the attacks of issue 16 on a
// loopback service that counts its connections.

// insideService stands in for a service on the worker's host that no job
// may reach; it answers what a signed PUT would love to read back.
func insideService(t *testing.T) *testenv.CountingServer {
	return testenv.StartCountingServer(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`<?xml version="1.0"?><Error><Code>AccessDenied</Code><Message>INSIDE-SECRET</Message></Error>`))
	}))
}

func s3Job(id, endpoint string) *proto.Job {
	return &proto.Job{ID: id, Input: json.RawMessage(input(sampler("1", 2) + save("9", "x"))),
		S3Config: &proto.S3Config{AccessID: "AKID", AccessSecret: "s3-secret-value", BucketName: "b", EndpointURL: endpoint}}
}

// TestS3ConfigReachesNothingInside: a job's s3Config naming a loopback
// service is refused, before the prompt runs when the URL says so and at
// connect time when a name resolves there; the service sees no connection
// and the job's error names the rule, without the endpoint's query or
// user info.
func TestS3ConfigReachesNothingInside(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		cfg      worker.Config
		endpoint string // %d is the service's port
		wantErr  string // a regular expression; %d is the port
		ran      bool   // the prompt ran (the refusal came at connect time)
	}{
		{name: "http is refused", endpoint: "http://127.0.0.1:%d",
			wantErr: `^s3Config\.endpointUrl: only https URLs are accepted, not http \(S3_CONFIG_ALLOW_HTTP allows http\)$`},
		{name: "loopback is refused", cfg: worker.Config{S3ConfigAllowHTTP: true}, endpoint: "http://127.0.0.1:%d/?X-Token=query-secret",
			wantErr: `^s3Config\.endpointUrl: address not allowed: 127\.0\.0\.1:%d is a loopback address \(S3_CONFIG_ALLOW lists exceptions\)$`},
		{name: "a decimal address is read as one", cfg: worker.Config{S3ConfigAllowHTTP: true}, endpoint: "http://2130706433:%d",
			wantErr: `^s3Config\.endpointUrl: address not allowed: 127\.0\.0\.1:%d is a loopback address`},
		{name: "an octal address is read as one", cfg: worker.Config{S3ConfigAllowHTTP: true}, endpoint: "https://0177.0.0.1:%d",
			wantErr: `^s3Config\.endpointUrl: address not allowed: 127\.0\.0\.1:%d is a loopback address`},
		{name: "an entry without a port is the default port only", cfg: worker.Config{S3ConfigAllowHTTP: true, S3ConfigAllow: []string{"127.0.0.1"}},
			endpoint: "http://127.0.0.1:%d", wantErr: `S3_CONFIG_ALLOW allows it on other ports only \(an entry without a port means port 80\)$`},
		{name: "user info and query are refused unrepeated", endpoint: "https://user:pw-secret@s3.example.com/b?X-Token=query-secret",
			wantErr: `^Invalid s3Config: endpoint URL https://s3\.example\.com/b\?…: want http\(s\)://host\[:port\]\[/path\], without user info, query or fragment$`},
		{name: "a name resolving inside is refused at connect time", cfg: worker.Config{S3ConfigAllowHTTP: true},
			endpoint: "http://localhost:%d", ran: true,
			wantErr: `^Error uploading x_00001_\.png to S3: put job-s3/x_00001_\.png: s3Config\.endpointUrl: address not allowed: (127\.0\.0\.1|\[::1\]):%d is a loopback address \(S3_CONFIG_ALLOW lists exceptions\)$`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			inside := insideService(t)
			b := setup(t)
			b.startWorker("w1", tt.cfg)
			endpoint := tt.endpoint
			if strings.Contains(endpoint, "%d") {
				endpoint = fmt.Sprintf(endpoint, inside.Port())
			}
			b.enqueueJob(s3Job("job-s3", endpoint))
			rec := b.wait("job-s3", proto.StatusFailed)
			f := b.failure(rec)
			wantErr := tt.wantErr
			if strings.Contains(wantErr, "%d") {
				wantErr = fmt.Sprintf(wantErr, inside.Port())
			}
			if tt.ran {
				require.Equal(t, "Job processing failed", f.Error)
				require.Len(t, f.Details, 1)
				require.Regexp(t, wantErr, f.Details[0])
				require.Len(t, b.sim.Prompts(), 1)
			} else {
				require.Regexp(t, wantErr, f.Error)
				require.Empty(t, b.sim.Prompts(), "refused before anything ran")
			}
			for _, secret := range []string{"query-secret", "pw-secret", "s3-secret-value", "INSIDE-SECRET"} {
				require.NotContains(t, string(rec.Output)+rec.Error, secret)
			}
			require.Equal(t, 0, inside.Connections(t), "the inside service saw no connection")
		})
	}
}

// TestS3ConfigAnswerTextStaysOut: an allowed endpoint's answers reach the
// job's error and the worker's log only as their status, never as what
// the endpoint wrote (its code, message, request id or body).
func TestS3ConfigAnswerTextStaysOut(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		answer  func(w http.ResponseWriter)
		wantErr string
	}{
		{name: "S3 error document", answer: func(w http.ResponseWriter) {
			w.Header().Set("x-amz-request-id", "EVIL-REQUEST-ID")
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`<?xml version="1.0"?><Error><Code>AccessDenied</Code><Message>EVIL-MESSAGE</Message><RequestId>EVIL-ID</RequestId></Error>`))
		}, wantErr: "Error uploading x_00001_.png to S3: put job-evil/x_00001_.png: blob access denied (HTTP 403 Forbidden)"},
		{name: "unknown code", answer: func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`<?xml version="1.0"?><Error><Code>EVIL-CODE</Code><Message>EVIL-MESSAGE</Message></Error>`))
		}, wantErr: "Error uploading x_00001_.png to S3: put job-evil/x_00001_.png: the endpoint answered HTTP 400 Bad Request"},
		{name: "not S3 at all", answer: func(w http.ResponseWriter) {
			w.WriteHeader(http.StatusTeapot)
			_, _ = w.Write([]byte("EVIL-BODY"))
		}, wantErr: "Error uploading x_00001_.png to S3: put job-evil/x_00001_.png: the endpoint answered HTTP 418 I'm a teapot"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := testenv.StartCountingServer(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { tt.answer(w) }))
			b := setup(t)
			core, logs := observer.New(zapcore.DebugLevel)
			b.startWorker("w1", worker.Config{S3ConfigAllow: []string{srv.HostPort()}, S3ConfigAllowHTTP: true}, workerOpts{logger: zap.New(core)})
			b.enqueueJob(s3Job("job-evil", srv.URL))
			rec := b.wait("job-evil", proto.StatusFailed)
			f := b.failure(rec)
			require.Equal(t, proto.Failure{Error: "Job processing failed", Details: []string{tt.wantErr}}, f)
			var dump strings.Builder
			for _, e := range logs.All() {
				fmt.Fprintf(&dump, "%s %v\n", e.Message, e.ContextMap())
			}
			require.NotContains(t, dump.String()+string(rec.Output), "EVIL")
			require.Positive(t, srv.Connections(t), "the allowed endpoint was reached")
		})
	}
}

// TestInputURLNumericAndAnswerText: an input URL whose host is a number
// is refused as the address it denotes, without a connection; an allowed
// one that answers is named by its status only.
func TestInputURLNumericAndAnswerText(t *testing.T) {
	t.Parallel()
	inside := insideService(t)
	b := setup(t)
	b.startWorker("w1", worker.Config{InputURLAllowHTTP: true})
	for i, host := range []string{"2130706433", "0x7f.1", "0177.0.0.1", "127.1", "0x7f000001"} {
		id := fmt.Sprintf("numeric-%d", i)
		b.enqueueJob(&proto.Job{ID: id, Input: json.RawMessage(input(loadAndSave("a.png", "out"),
			fmt.Sprintf(`"images":[{"name":"a.png","image":"http://%s:%d/a.png"}]`, host, inside.Port())))})
		rec := b.wait(id, proto.StatusFailed)
		require.Equal(t, []string{fmt.Sprintf("Error downloading a.png from http://%s:%d/a.png: input URL: address not allowed: 127.0.0.1:%d is a loopback address (INPUT_URL_ALLOW lists exceptions)",
			host, inside.Port(), inside.Port())}, b.failure(rec).Details, host)
	}
	require.Equal(t, 0, inside.Connections(t))

	// A receiver that answers with a reason phrase and a body of its own.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			buf := make([]byte, 64<<10)
			_, _ = c.Read(buf)
			_, _ = c.Write([]byte("HTTP/1.1 502 EVIL-REASON\r\nContent-Length: 9\r\nConnection: close\r\n\r\nEVIL-BODY"))
			c.Close()
		}
	}()
	b2 := setup(t)
	b2.startWorker("w1", worker.Config{InputURLAllowHTTP: true, InputURLAllow: []string{ln.Addr().String()}})
	b2.enqueueJob(&proto.Job{ID: "evil-answer", Input: json.RawMessage(input(loadAndSave("a.png", "out"),
		`"images":[{"name":"a.png","image":"http://`+ln.Addr().String()+`/a.png"}]`))})
	rec := b2.wait("evil-answer", proto.StatusFailed)
	require.Equal(t, []string{"Error downloading a.png from http://" + ln.Addr().String() + "/a.png: HTTP 502 Bad Gateway"}, b2.failure(rec).Details)
}
