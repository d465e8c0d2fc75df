package worker_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image/color"
	"image/jpeg"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/worker"
	"github.com/comfyfleet/comfyfleet/proto"
)

// inputServer is an https server for input URLs, trusted by the bundle's
// workers.
func (b *bundle) inputServer(h http.HandlerFunc) *httptest.Server {
	srv := httptest.NewTLSServer(h)
	b.t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	b.inputTLS = &tls.Config{RootCAs: pool}
	return srv
}

// urlJob is a job loading one input given by URL.
func urlJob(path string, h http.HandlerFunc) func(*bundle) *proto.Job {
	return func(b *bundle) *proto.Job {
		srv := b.inputServer(h)
		return &proto.Job{Input: json.RawMessage(input(loadAndSave("a.png", "out"),
			`"images":[{"name":"a.png","image":"`+srv.URL+path+`"}]`))}
	}
}

func serveBytes(data []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(data) }
}

// uploadDetail checks a job that failed on one input.
func uploadDetail(check func(t *testing.T, detail string)) func(*testing.T, *bundle, *proto.Record) {
	return func(t *testing.T, b *bundle, rec *proto.Record) {
		f := b.failure(rec)
		require.Equal(t, "Failed to upload one or more input images", f.Error)
		require.Len(t, f.Details, 1)
		check(t, f.Details[0])
	}
}

// TestIssue3Behaviours covers what issue 3 adds to worker-comfyui: input
// URLs and their guard, input limits, blob inputs, refused uploads, richer
// validation messages, retries, every output kind, temp outputs, and the
// job's own s3Config being checked.
func TestIssue3Behaviours(t *testing.T) {
	t.Parallel()
	red := pngBytes(t, 8, 8, color.RGBA{R: 255, A: 255})
	runCompat(t, []compatCase{{
		name: "input URL, content type sniffed",
		cfg:  worker.Config{InputURLAllow: []string{"127.0.0.1:*"}},
		job:  urlJob("/in/a.png?sig=secret", serveBytes(red)), want: proto.StatusCompleted,
		check: func(t *testing.T, b *bundle, rec *proto.Record) {
			ups := b.sim.Uploads()
			require.Len(t, ups, 2, "the input, then its emptying after the job")
			require.Equal(t, "image/png", ups[0].ContentType)
			require.Equal(t, len(red), ups[0].Size)
			require.Zero(t, ups[1].Size)
			require.Len(t, b.output(rec).Images, 1)
		},
	}, {
		name: "input URL to a loopback address is refused",
		job:  urlJob("/a.png?sig=secret", serveBytes(red)), want: proto.StatusFailed,
		check: uploadDetail(func(t *testing.T, d string) {
			require.Regexp(t, `^Error downloading a\.png from https://127\.0\.0\.1:\d+/a\.png\?…: input URL: address not allowed: 127\.0\.0\.1:\d+ is a loopback address \(INPUT_URL_ALLOW lists exceptions\)$`, d)
			require.NotContains(t, d, "secret")
		}),
	}, {
		name: "input URL over plain http is refused",
		job:  inputJob(input(loadAndSave("a.png", "out"), `"images":[{"name":"a.png","image":"http://example.com/a.png"}]`)), want: proto.StatusFailed,
		check: wantFailure("Failed to upload one or more input images",
			"Error downloading a.png from http://example.com/a.png: input URL: only https URLs are accepted, not http (INPUT_URL_ALLOW_HTTP allows http)"),
	}, {
		name: "input URL answering 404",
		cfg:  worker.Config{InputURLAllow: []string{"127.0.0.0/8:*"}},
		job:  urlJob("/missing.png", http.NotFound), want: proto.StatusFailed,
		check: uploadDetail(func(t *testing.T, d string) {
			require.Regexp(t, `^Error downloading a\.png from https://127\.0\.0\.1:\d+/missing\.png: HTTP 404 Not Found$`, d)
		}),
	}, {
		name: "input URL larger than the cap",
		cfg:  worker.Config{InputURLAllow: []string{"127.0.0.1:*"}, MaxInputBytes: 50},
		job:  urlJob("/a.png", serveBytes(red)), want: proto.StatusFailed,
		check: wantFailure("Failed to upload one or more input images", "Input a.png is larger than the 50-byte limit"),
	}, {
		name: "input URL streaming past the cap",
		cfg:  worker.Config{InputURLAllow: []string{"127.0.0.1:*"}, MaxInputBytes: 100},
		job: urlJob("/a.png", func(w http.ResponseWriter, _ *http.Request) {
			for range 4 { // chunked: no Content-Length to check up front
				_, _ = w.Write(red[:50])
				w.(http.Flusher).Flush()
			}
		}),
		want:  proto.StatusFailed,
		check: wantFailure("Failed to upload one or more input images", "Input a.png is larger than the 100-byte limit"),
	}, {
		name: "input URL timing out",
		cfg:  worker.Config{InputURLAllow: []string{"127.0.0.1:*"}, InputURLTimeout: 200 * time.Millisecond},
		job:  urlJob("/slow.png", func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() }), want: proto.StatusFailed,
		check: uploadDetail(func(t *testing.T, d string) {
			require.Regexp(t, `^Error downloading a\.png from https://127\.0\.0\.1:\d+/slow\.png: timed out after 200ms$`, d)
		}),
	}, {
		name: "base64 input larger than the cap",
		cfg:  worker.Config{MaxInputBytes: 10},
		job:  inputJob(input(loadAndSave("a.png", "out"), `"images":[{"name":"a.png","image":"`+b64(red)+`"}]`)), want: proto.StatusFailed,
		check: wantFailure("Failed to upload one or more input images", "Input a.png is larger than the 10-byte limit"),
	}, {
		name: "duplicate input names",
		job: inputJob(input(loadAndSave("a.png", "out"),
			`"images":[{"name":"a.png","image":"`+b64(red)+`"},{"name":"a.png","image":"`+b64(red)+`"}]`)),
		want:  proto.StatusFailed,
		check: wantFailure(`images[1].name "a.png" repeats images[0].name`),
	}, {
		name: "input name with a path",
		job:  inputJob(input(loadAndSave("a.png", "out"), `"images":[{"name":"../a.png","image":"`+b64(red)+`"}]`)), want: proto.StatusFailed,
		check: wantFailure(`images[0].name: "../a.png" contains a path separator or NUL; give a bare file name`),
	}, {
		name: "input from the blob store",
		job: func(b *bundle) *proto.Job {
			_, err := b.blobs.Put(ctxT(b.t), "in/blob-job/a.png", "image/png", bytes.NewReader(red))
			require.NoError(b.t, err)
			return &proto.Job{Input: json.RawMessage(input(loadAndSave("a.png", "out"), `"images":[{"name":"a.png","blob":"in/blob-job/a.png"}]`))}
		},
		want: proto.StatusCompleted,
		check: func(t *testing.T, b *bundle, rec *proto.Record) {
			require.Equal(t, len(red), b.sim.Uploads()[0].Size)
		},
	}, {
		name:  "uploads refused",
		fault: comfysim.Fault{UploadStatus: http.StatusInternalServerError},
		job:   inputJob(input(loadAndSave("a.png", "out"), `"images":[{"name":"a.png","image":"`+b64(red)+`"}]`)), want: proto.StatusFailed,
		check: func(t *testing.T, b *bundle, rec *proto.Record) {
			wantFailure("Failed to upload one or more input images",
				"Error uploading a.png: 500 Server Error: Internal Server Error for url: /upload/image")(t, b, rec)
		},
	}, {
		name: "missing node class",
		job:  inputJob(input(`"1":{"class_type":"NoSuchNode","inputs":{}}`)), want: proto.StatusFailed,
		check: func(t *testing.T, b *bundle, rec *proto.Record) {
			// worker-comfyui's format: the message, a stray period, the body.
			require.Equal(t, `Node 'NoSuchNode' not found. The custom node may not be installed.. Raw response: {"error": {"type": "missing_node_type", "message": "Node 'NoSuchNode' not found. The custom node may not be installed.", "details": "Node ID '#1'", "extra_info": {"node_id": "1", "class_type": "NoSuchNode", "node_title": "NoSuchNode"}}, "node_errors": {}}`, rec.Error)
			require.Equal(t, 1, rec.Attempt)
		},
	}, {
		name: "missing diffusion model lists the options",
		job: inputJob(input(`"1":{"class_type":"UNETLoader","inputs":{"unet_name":"flux-nope.safetensors","weight_dtype":"default"}},
			"2":{"class_type":"PreviewAny","inputs":{"source":["1",0]}}`)),
		want: proto.StatusFailed,
		check: wantFailure("Workflow validation failed:\n" +
			"• Node 1 (errors): UNETLoader input unet_name: Value not in list: 'flux-nope.safetensors' not in ['flux1-dev.safetensors']\n\n" +
			"Available options for input unet_name of UNETLoader: flux1-dev.safetensors"),
	}, {
		name:  "out of memory once, then retried",
		fault: comfysim.Fault{FailClass: "KSampler", FailOOM: true, FailTimes: 1},
		job:   inputJob(input(sampler("1", 2) + save("9", "x"))), want: proto.StatusCompleted,
		check: func(t *testing.T, b *bundle, rec *proto.Record) {
			require.Equal(t, 2, rec.Attempt)
			require.Equal(t, 1, rec.Retries)
		},
	}, {
		name:  "out of memory every time",
		fault: comfysim.Fault{FailClass: "KSampler", FailOOM: true},
		cfg:   worker.Config{MaxAttempts: 2},
		job:   inputJob(input(sampler("1", 2) + save("9", "x"))), want: proto.StatusFailed,
		check: func(t *testing.T, b *bundle, rec *proto.Record) {
			require.Equal(t, 2, rec.Attempt)
			f := b.failure(rec)
			require.Equal(t, "Job processing failed", f.Error)
			require.Len(t, f.Details, 1)
			require.True(t, strings.HasPrefix(f.Details[0], "Workflow execution error: Node Type: KSampler, Node ID: 3, Message: CUDA out of memory."), f.Details[0])
			// The job is on the pool's dead-letter stream with its error.
			s, err := b.nats.JS.Stream(ctxT(t), proto.DLQStream)
			require.NoError(t, err)
			var m *jetstream.RawStreamMsg
			eventually(t, func() bool {
				m, err = s.GetLastMsgForSubject(ctxT(t), proto.DLQSubject(proto.DefaultPool))
				return err == nil
			}, "no dead letter")
			require.Equal(t, "Job processing failed: "+strings.Join(strings.Fields(f.Details[0]), " "), m.Header.Get(proto.DLQReasonHeader), "the cause, on one line")
			require.Contains(t, string(m.Data), rec.ID)
		},
	}, {
		name:  "a node fails after another saved its output",
		fault: comfysim.Fault{FailClass: "SaveAnimatedWEBP", FailMessage: "disk full"},
		job: inputJob(input(sampler("1", 2) + save("9", "a") +
			`,"20":{"class_type":"SaveAnimatedWEBP","inputs":{"images":["9",0],"filename_prefix":"w","fps":6,"lossless":true,"quality":80,"method":"default"}}`)),
		want: proto.StatusCompleted,
		check: func(t *testing.T, b *bundle, rec *proto.Record) {
			out := b.output(rec)
			require.Len(t, out.Images, 1)
			require.Equal(t, []string{"Workflow execution error: Node Type: SaveAnimatedWEBP, Node ID: 20, Message: disk full"}, out.Errors)
		},
	}, {
		name: "every output kind",
		job: inputJob(input(strings.Replace(sampler("1", 2), `"batch_size":1`, `"batch_size":2`, 1) + save("9", "img") + `,
			"20":{"class_type":"SaveAnimatedWEBP","inputs":{"images":["8",0],"filename_prefix":"anim","fps":6,"lossless":true,"quality":80,"method":"default"}},
			"21":{"class_type":"CreateVideo","inputs":{"images":["8",0],"fps":24}},
			"22":{"class_type":"SaveVideo","inputs":{"video":["21",0],"filename_prefix":"video/clip","format":"auto","codec":"auto"}},
			"23":{"class_type":"SaveWEBM","inputs":{"images":["8",0],"filename_prefix":"web","codec":"vp9","fps":12,"crf":32}},
			"30":{"class_type":"EmptyLatentAudio","inputs":{"seconds":1,"batch_size":1}},
			"31":{"class_type":"VAEDecodeAudio","inputs":{"samples":["30",0],"vae":["4",2]}},
			"32":{"class_type":"SaveAudio","inputs":{"audio":["31",0],"filename_prefix":"audio/sound"}},
			"40":{"class_type":"PreviewAny","inputs":{"source":"a caption"}}`)),
		want: proto.StatusCompleted,
		check: func(t *testing.T, b *bundle, rec *proto.Record) {
			out := b.output(rec)
			names := func(items []proto.OutputItem) (n []string) {
				for _, it := range items {
					n = append(n, it.Subfolder+"|"+it.Filename+"|"+it.Mime)
				}
				return n
			}
			require.Equal(t, []string{"|img_00001_.png|image/png", "|img_00002_.png|image/png"}, names(out.Images))
			require.ElementsMatch(t, []string{"|anim_00001_.webp|image/webp", "video|clip_00001_.mp4|video/mp4", "|web_00001_.webm|video/webm"}, names(out.Videos))
			require.Equal(t, []string{"audio|sound_00001.flac|audio/flac"}, names(out.Audio))
			require.Equal(t, []proto.OutputItem{{Type: proto.ItemText, Data: "a caption", NodeID: "40", Mime: "text/plain"}}, out.Text)
			require.Empty(t, out.Errors)
			require.Equal(t, "fLaC", string(b.blobBytes(out.Audio[0].Blob)[:4]))
		},
	}, {
		name: "temp outputs when asked for",
		job: inputJob(input(sampler("1", 2)+save("9", "a")+`,"11":{"class_type":"PreviewImage","inputs":{"images":["8",0]}}`,
			`"include_temp":true`)),
		want: proto.StatusCompleted,
		check: func(t *testing.T, b *bundle, rec *proto.Record) {
			out := b.output(rec)
			require.Len(t, out.Images, 2)
			require.Contains(t, out.Images[1].Filename, "_temp_")
		},
	}, {
		name: "bad previews option",
		job:  inputJob(input(sampler("1", 2)+save("9", "a"), `"previews":"sometimes"`)), want: proto.StatusFailed,
		check: wantFailure(`'previews' must be true, false, "auto", "latent2rgb" or "taesd"`),
	}, {
		name: "invalid s3Config",
		job: func(*bundle) *proto.Job {
			return &proto.Job{Input: json.RawMessage(input(sampler("1", 2) + save("9", "a"))),
				S3Config: &proto.S3Config{AccessID: "id", AccessSecret: "", BucketName: "b", EndpointURL: "https://s3.example.com"}}
		},
		want: proto.StatusFailed,
		check: func(t *testing.T, b *bundle, rec *proto.Record) {
			wantFailure("Invalid s3Config: credentials missing: both the access key id and the secret access key are required")(t, b, rec)
			require.Empty(t, b.sim.Prompts(), "nothing ran")
		},
	}, {
		name: "refresh worker frees comfyui after the job",
		cfg:  worker.Config{RefreshWorker: true},
		job:  inputJob(input(sampler("1", 2) + save("9", "a"))), want: proto.StatusCompleted,
		check: func(t *testing.T, b *bundle, rec *proto.Record) {
			eventually(t, func() bool { return b.sim.Stats().FreeRequests == 1 }, "no POST /free")
		},
	}})
}

func TestProgressAndPreviewEvents(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.startWorker("w1", worker.Config{PreviewEvery: time.Millisecond, ProgressEvery: time.Millisecond})
	events := b.watch("prev")
	b.enqueue("prev", input(sampler("1", 4)+save("9", "p"), `"previews":true`))
	b.wait("prev", proto.StatusCompleted)

	eventually(t, func() bool { return len(events.ofType("progress")) > 0 }, "no progress events")
	var last map[string]any
	for _, ev := range events.ofType("progress") {
		p := ev["progress"].(map[string]any)
		require.Equal(t, "3", p["node"])
		require.EqualValues(t, 4, p["max"])
		last = p
	}
	require.EqualValues(t, 4, last["value"], "the last tick is always sent")
	require.EqualValues(t, 100, last["percent"])

	previews := events.ofType(string(proto.EventPreview))
	require.NotEmpty(t, previews)
	pv := previews[0]["preview"].(map[string]any)
	require.Equal(t, "image/jpeg", pv["mime"])
	require.Equal(t, "3", pv["node"])
	data, err := base64.StdEncoding.DecodeString(pv["data"].(string))
	require.NoError(t, err)
	_, err = jpeg.Decode(bytes.NewReader(data))
	require.NoError(t, err)
	require.Contains(t, string(b.sim.Prompts()[0].ExtraData), `"preview_method": "auto"`)
}

// TestSecretsStayOut runs a job with a Comfy.org key and an s3Config and
// checks that neither reaches the logs (debug level), Redis or the events.
func TestSecretsStayOut(t *testing.T) {
	t.Parallel()
	b := setup(t)
	core, logs := observer.New(zapcore.DebugLevel)
	// The s3Config's endpoint is allowed, so its upload is tried (and fails).
	b.startWorker("w1", worker.Config{ComfyOrgAPIKey: "env-secret-key", S3ConfigAllow: []string{"127.0.0.1:1"}, S3ConfigAllowHTTP: true},
		workerOpts{logger: zap.New(core)})
	events := b.watch("secret")
	b.enqueue("secret", input(sampler("1", 2)+save("9", "s"), `"comfy_org_api_key":"input-secret-key"`))
	b.wait("secret", proto.StatusCompleted)
	// A failing job too: errors are where secrets leak.
	events2 := b.watch("secret2")
	b.enqueueJob(&proto.Job{ID: "secret2", Input: json.RawMessage(input(sampler("2", 2)+save("9", "s"), `"comfy_org_api_key":"input-secret-key"`)),
		S3Config: &proto.S3Config{AccessID: "AKIDSECRET", AccessSecret: "s3-secret-value", BucketName: "b", EndpointURL: "http://127.0.0.1:1"}})
	rec := b.wait("secret2", proto.StatusFailed)
	require.Contains(t, b.failure(rec).Details[0], "Error uploading s_00002_.png to S3: ")
	b.requireDrained()

	require.Contains(t, string(b.sim.Prompts()[0].ExtraData), "input-secret-key", "the key did reach ComfyUI")
	secrets := []string{"input-secret-key", "env-secret-key", "s3-secret-value"}
	var dump strings.Builder
	for _, e := range logs.All() {
		fmt.Fprintf(&dump, "%s %v\n", e.Message, e.ContextMap())
	}
	keys, err := b.rdb.Keys(context.Background(), b.prefix+"*").Result()
	require.NoError(t, err)
	require.NotEmpty(t, keys)
	for _, k := range keys {
		if typ := b.rdb.Type(context.Background(), k).Val(); typ == "hash" {
			fmt.Fprintf(&dump, "%v\n", b.rdb.HGetAll(context.Background(), k).Val())
		}
	}
	dump.WriteString(events.raw() + events2.raw())
	for _, s := range secrets {
		require.NotContains(t, dump.String(), s)
	}
	require.NotEmpty(t, logs.All(), "the worker did log")
}
