package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/batch"
	"github.com/comfyfleet/comfyfleet/internal/blob/s3/s3test"
	"github.com/comfyfleet/comfyfleet/internal/devstack"
	"github.com/comfyfleet/comfyfleet/internal/fleet"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// s3Server is one versitygw for the package's tests, started on first use.
var s3Server s3test.Lazy

// devArgs run `comfyfleet dev` beside other tests: a random API port and
// NATS port, quiet logs.
var devArgs = []string{"dev", "--listen", "127.0.0.1:0", "--nats-port", "-1", "--log-level", "warn"}

// devUp waits until the `comfyfleet dev` in work has written its stack
// file, and reads it.
func devUp(t *testing.T, work string, dev *proc) devstack.Info {
	t.Helper()
	path := filepath.Join(work, ".comfyfleet", devstack.StackFile)
	var info devstack.Info
	require.Eventually(t, func() bool {
		select {
		case <-dev.done:
			return true // fails below
		default:
		}
		data, err := os.ReadFile(path)
		return err == nil && json.Unmarshal(data, &info) == nil
	}, time.Minute, 20*time.Millisecond, "comfyfleet dev did not come up:\n%s", dev.out)
	select {
	case <-dev.done:
		t.Fatalf("comfyfleet dev exited:\n%s", dev.out)
	default:
	}
	require.Equal(t, dev.cmd.Process.Pid, info.PID, "the stack file is this dev's")
	return info
}

// devDown stops `comfyfleet dev` as Ctrl-C does.
func devDown(t *testing.T, work string, dev *proc) {
	t.Helper()
	require.NoError(t, dev.cmd.Process.Signal(os.Interrupt))
	require.Equal(t, exitOK, dev.wait(t, time.Minute), dev.out.String())
	_, err := os.Stat(filepath.Join(work, ".comfyfleet", devstack.StackFile))
	require.ErrorIs(t, err, fs.ErrNotExist, "the stack file is gone")
}

// api is a client of a dev stack's API.
type api struct {
	url string
	key string // sent as a bearer token when set
}

// client bounds every request (a /runsync included).
var client = &http.Client{Timeout: 2 * time.Minute}

// do sends a request. t may be the *assert.CollectT of an
// EventuallyWithT: a failure then ends that try only.
func (a api) do(t require.TestingT, method, path string, body []byte) (int, []byte) {
	req, err := http.NewRequest(method, a.url+path, bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	if a.key != "" {
		req.Header.Set("Authorization", "Bearer "+a.key)
	}
	resp, err := client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, data
}

// status reads a job's status as a RunPod client does.
type status struct {
	ID     string       `json:"id"`
	Status proto.Status `json:"status"`
	Output *struct {
		Images []proto.OutputItem `json:"images"`
	} `json:"output"`
	Error string `json:"error"`
}

func (a api) status(t require.TestingT, id string) status {
	code, body := a.do(t, http.MethodGet, "/status/"+id, nil)
	require.Equal(t, http.StatusOK, code, "%s", body)
	var st status
	require.NoError(t, json.Unmarshal(body, &st), "%s", body)
	return st
}

// run submits a workflow whose seed is seed with /run.
func (a api) run(t *testing.T, seed int) string {
	t.Helper()
	code, body := a.do(t, http.MethodPost, "/run", []byte(withSeed(t, seed)))
	require.Equal(t, http.StatusOK, code, "%s", body)
	var st status
	require.NoError(t, json.Unmarshal(body, &st))
	require.NotEmpty(t, st.ID)
	return st.ID
}

func (a api) fleet(t require.TestingT) fleet.View {
	code, body := a.do(t, http.MethodGet, "/fleet", nil)
	require.Equal(t, http.StatusOK, code, "%s", body)
	var v fleet.View
	require.NoError(t, json.Unmarshal(body, &v), "%s", body)
	return v
}

// withSeed is the example txt2img request with another seed and a small
// image, so every job is a job of its own.
func withSeed(t *testing.T, seed int) string {
	t.Helper()
	example, err := os.ReadFile("../../examples/txt2img.json")
	require.NoError(t, err)
	s := strings.Replace(string(example), `"seed": 18446744073709551615`, fmt.Sprintf(`"seed": %d`, seed), 1)
	s = strings.Replace(s, `"width": 512`, `"width": 64`, 1)
	s = strings.Replace(s, `"height": 512`, `"height": 64`, 1)
	require.NotEqual(t, string(example), s, "the example changed: adapt withSeed")
	return s
}

// TestDevRestartCompletesQueuedJobs: `comfyfleet dev` stopped with 20 jobs
// queued (its workers' ComfyUI never answered, so none ran) and started
// again on the same folder runs all 20 to COMPLETED, from the records it
// kept: none had to be made again from its message. Both Redis kinds dev
// runs keep their data under --dir.
func TestDevRestartCompletesQueuedJobs(t *testing.T) {
	t.Parallel()
	redisServer, err := exec.LookPath("redis-server")
	require.NoError(t, err, "the redis-server path needs redis-server installed")
	for _, tt := range []struct {
		name, redisServer string
		want              string // Info.Redis
	}{
		{name: "redis-server", redisServer: redisServer, want: "redis-server"},
		{name: "embedded", redisServer: "-", want: "miniredis"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			work := t.TempDir()
			args := slices.Concat(devArgs, []string{"--redis-server", tt.redisServer, "--workers", "1"})

			// 1. Workers that cannot take jobs: their ComfyUI does not answer.
			dead := "http://" + testenv.FreeAddr(t)
			dev := start(t, work, slices.Concat(args, []string{"--comfyui-url", dead})...)
			info := devUp(t, work, dev)
			require.Equal(t, tt.want, info.Redis)
			a := api{url: info.APIURL}
			ids := make([]string, 20)
			for i := range ids {
				ids[i] = a.run(t, i+1)
			}
			// Every job admitted and waiting on its lane, none running.
			require.EventuallyWithT(t, func(c *assert.CollectT) {
				v := a.fleet(c)
				assert.Zero(c, v.Intake, "not yet admitted")
				var queued, running uint64
				for _, l := range v.Lanes {
					queued, running = queued+l.Queued, running+l.Running
				}
				assert.EqualValues(c, 20, queued)
				assert.Zero(c, running)
			}, 30*time.Second, 50*time.Millisecond)
			for _, id := range ids {
				require.Equal(t, proto.StatusInQueue, a.status(t, id).Status, id)
			}
			devDown(t, work, dev)

			// 2. The same folder, with working emulators.
			dev = start(t, work, slices.Concat(args, []string{"--step-delay", "1ms"})...)
			info = devUp(t, work, dev)
			require.Equal(t, tt.want, info.Redis)
			a = api{url: info.APIURL}
			final := map[string]status{}
			require.EventuallyWithT(t, func(c *assert.CollectT) {
				for _, id := range ids {
					if _, done := final[id]; done {
						continue
					}
					if st := a.status(c, id); st.Status.Terminal() {
						final[id] = st
					}
				}
				assert.Len(c, final, len(ids), "jobs finished")
			}, 2*time.Minute, 100*time.Millisecond)
			for _, id := range ids {
				st := final[id]
				require.Equal(t, proto.StatusCompleted, st.Status, "%s: %s", id, st.Error)
				require.NotNil(t, st.Output, id)
				require.Len(t, st.Output.Images, 1, id)
			}
			totals := a.fleet(t).Totals
			require.EqualValues(t, 20, totals[proto.StatusCompleted], "%v", totals)
			require.Zero(t, totals[rdb.CountRecreated], "records made again from the job messages: %v", totals)
			devDown(t, work, dev)
		})
	}
}

// TestSecondDevOnTheSameFolderRefuses: while one `comfyfleet dev` runs, a
// second one on its folder exits non-zero, naming the process that holds
// it, and leaves the first one alone.
func TestSecondDevOnTheSameFolderRefuses(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	args := slices.Concat(devArgs, []string{"--workers", "1", "--redis-server", "-"})
	first := start(t, work, args...)
	info := devUp(t, work, first)

	second := start(t, work, args...)
	require.Equal(t, exitNotAllDone, second.wait(t, time.Minute), second.out.String())
	out := second.out.String()
	require.Contains(t, out, "folder .comfyfleet is in use by process "+strconv.Itoa(first.cmd.Process.Pid), out)
	require.Contains(t, out, "stop it or use another --dir")

	code, body := api{url: info.APIURL}.do(t, http.MethodGet, "/health", nil)
	require.Equal(t, http.StatusOK, code, "the first stack still serves: %s", body)
	again := devUp(t, work, first)
	require.Equal(t, info, again, "the stack file is still the first one's")
	devDown(t, work, first)
}

// TestCommandsWithoutFleet: with no `comfyfleet dev` found and neither
// NATS_URL nor REDIS_URL set, the CLI says so and exits non-zero; it never
// tries the default addresses.
func TestCommandsWithoutFleet(t *testing.T) {
	t.Parallel()
	empty := t.TempDir()
	for _, args := range [][]string{{"status", "x"}, {"fleet"}, {"dlq", "list"}} {
		p := start(t, empty, args...)
		require.Equal(t, exitNotAllDone, p.wait(t, 30*time.Second), "%v: %s", args, p.out)
		out := p.out.String()
		require.Contains(t, out, batch.ErrNoFleet.Error(), args)
		require.Contains(t, out, "neither NATS_URL nor REDIS_URL is set", args)
		require.NotContains(t, out, "connect to", "%v: tried to connect: %s", args, out)
	}
}

// TestDevHonoursAPIKeysAndBuckets: API_KEYS, ADMIN_KEYS and BUCKET_*
// given to `comfyfleet dev` in its environment, as to the runpod-adapter,
// the dispatcher and the gpuworker, take effect: the API wants a key, each
// key is a tenant that sees its own jobs only, the operator routes want an
// admin key, and outputs go to a real S3 and come back as s3_url items.
func TestDevHonoursAPIKeysAndBuckets(t *testing.T) {
	t.Parallel()
	srv := s3Server.Get(t)
	bucket := srv.Bucket(t)
	work := t.TempDir()
	dev := startWith(t, work, []string{
		"API_KEYS=k-dev-1,beta:k-dev-2", "ADMIN_KEYS=ops:k-admin",
		"BUCKET_ENDPOINT_URL=" + srv.Endpoint, "BUCKET_ACCESS_KEY_ID=" + srv.AccessKey,
		"BUCKET_SECRET_ACCESS_KEY=" + srv.SecretKey, "BUCKET_NAME=" + bucket, "BUCKET_REGION=" + srv.Region,
		"BUCKET_ADDRESSING_STYLE=path", "BUCKET_PREFIX=dev",
	}, slices.Concat(devArgs, []string{"--workers", "1", "--redis-server", "-", "--step-delay", "1ms"})...)
	info := devUp(t, work, dev)

	// API_KEYS: no key, or a wrong one, is refused, on the API and on
	// the dispatcher's routes beside it on the same listener.
	for _, key := range []string{"", "k-wrong"} {
		code, body := api{url: info.APIURL, key: key}.do(t, http.MethodPost, "/runsync", []byte(withSeed(t, 7)))
		require.Equal(t, http.StatusUnauthorized, code, "key %q: %s", key, body)
		for _, path := range []string{"/health", "/fleet", "/dlq", "/metrics"} {
			code, body = api{url: info.APIURL, key: key}.do(t, http.MethodGet, path, nil)
			require.Equal(t, http.StatusUnauthorized, code, "key %q, %s: %s", key, path, body)
		}
		code, body = api{url: info.APIURL, key: key}.do(t, http.MethodPost, "/dlq/1/replay", nil)
		require.Equal(t, http.StatusUnauthorized, code, "key %q: %s", key, body)
	}
	code, body := api{url: info.APIURL, key: "k-dev-1"}.do(t, http.MethodGet, "/health", nil)
	require.Equal(t, http.StatusOK, code, "%s", body)
	// ADMIN_KEYS: the operator routes take admin keys, never API keys.
	for _, path := range []string{"/fleet", "/dlq", "/metrics"} {
		code, body := api{url: info.APIURL, key: "k-dev-1"}.do(t, http.MethodGet, path, nil)
		require.Equal(t, http.StatusForbidden, code, "an API key on %s: %s", path, body)
		code, body = api{url: info.APIURL, key: "k-admin"}.do(t, http.MethodGet, path, nil)
		require.Equal(t, http.StatusOK, code, "%s: %s", path, body)
	}
	code, body = api{url: info.APIURL, key: "k-dev-1"}.do(t, http.MethodPost, "/dlq/1/replay", nil)
	require.Equal(t, http.StatusForbidden, code, "%s", body)

	// With a key: the job runs, and BUCKET_*: its output is in the bucket.
	a := api{url: info.APIURL, key: "k-dev-2"}
	code, body = a.do(t, http.MethodPost, "/runsync", []byte(withSeed(t, 7)))
	require.Equal(t, http.StatusOK, code, "%s", body)
	var st status
	require.NoError(t, json.Unmarshal(body, &st), "%s", body)
	require.Equal(t, proto.StatusCompleted, st.Status, "%s", body)
	require.NotNil(t, st.Output, "%s", body)
	require.Len(t, st.Output.Images, 1)
	item := st.Output.Images[0]
	require.Equal(t, proto.ItemS3URL, item.Type, "an s3_url item, not inline: %s", body)
	require.True(t, strings.HasPrefix(item.Data, srv.Endpoint+"/"+bucket+"/dev/"+st.ID+"/"), "URL %s", item.Data)
	_, err := base64.StdEncoding.DecodeString(item.Data)
	require.Error(t, err, "not base64 data")

	// The URL (presigned) gives the picture, which is in the bucket.
	resp, err := http.Get(item.Data)
	require.NoError(t, err)
	pic, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", pic)
	img, err := png.Decode(bytes.NewReader(pic))
	require.NoError(t, err)
	require.Equal(t, 64, img.Bounds().Dx())
	stored, err := os.ReadFile(filepath.Join(srv.Dir, bucket, "dev", st.ID, item.Filename))
	require.NoError(t, err, "the object in versitygw's folder")
	require.Equal(t, pic, stored)

	// /status with the key reads the same job, as does an admin; for the
	// other tenant it does not exist.
	require.Equal(t, proto.StatusCompleted, a.status(t, st.ID).Status)
	require.Equal(t, proto.StatusCompleted, api{url: info.APIURL, key: "k-admin"}.status(t, st.ID).Status)
	code, body = api{url: info.APIURL, key: "k-dev-1"}.do(t, http.MethodGet, "/status/"+st.ID, nil)
	require.Equal(t, http.StatusNotFound, code, "another tenant's job: %s", body)

	// The stack file names its S3, so `comfyfleet submit` downloads the
	// s3_url outputs from the loopback http endpoint through its guard
	// without being told to allow it.
	require.Equal(t, []string{srv.Endpoint}, info.S3Origins)
	require.NoError(t, os.WriteFile(filepath.Join(work, "wf.json"), []byte(withSeed(t, 8)), 0o644))
	sub := start(t, work, "submit", "wf.json", "--out", "out")
	require.Equal(t, exitOK, sub.wait(t, time.Minute), sub.out.String())
	manifest, err := os.ReadFile(filepath.Join(work, "out", "results.jsonl"))
	require.NoError(t, err)
	var res batch.Result
	require.NoError(t, json.Unmarshal(bytes.TrimSpace(manifest), &res), "%s", manifest)
	require.Empty(t, res.DownloadError)
	require.Len(t, res.Files, 1)
	require.True(t, strings.HasPrefix(res.Files[0].URL, srv.Endpoint+"/"), "an s3_url output: %s", manifest)
	got, err := os.ReadFile(filepath.Join(work, "out", filepath.FromSlash(res.Files[0].Path)))
	require.NoError(t, err)
	_, err = png.Decode(bytes.NewReader(got))
	require.NoError(t, err, "the downloaded picture")

	// One API job's files: the file route sends its owner to the S3 URL,
	// and is 404 for another tenant; `comfyfleet get` fetches it from S3.
	req, err := http.NewRequest(http.MethodGet, info.APIURL+"/v2/dev/files/"+st.ID+"/"+item.Filename, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer k-dev-2")
	noFollow := &http.Client{Timeout: time.Minute, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err = noFollow.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusTemporaryRedirect, resp.StatusCode)
	require.Equal(t, item.Data, resp.Header.Get("Location"), "to the output's own (presigned) URL")
	code, body = api{url: info.APIURL, key: "k-dev-1"}.do(t, http.MethodGet, "/v2/dev/files/"+st.ID+"/"+item.Filename, nil)
	require.Equal(t, http.StatusNotFound, code, "another tenant's job: %s", body)
	g := start(t, work, "get", st.ID, "--out", "got")
	require.Equal(t, exitOK, g.wait(t, time.Minute), g.out.String())
	require.Contains(t, g.out.String(), filepath.Join("got", item.Filename))
	fetched, err := os.ReadFile(filepath.Join(work, "got", item.Filename))
	require.NoError(t, err)
	require.Equal(t, stored, fetched, "the bytes in the bucket")
	devDown(t, work, dev)
}

// TestGetAndFileRouteOnTheBlobStore: without S3, a finished job's files
// are in the blob store (NATS object store): the file route serves them
// with their type and a policy that runs nothing, names the files it has
// when asked for another, and `comfyfleet get` downloads them with their
// names; an unknown or unfinished job is an error that says so.
func TestGetAndFileRouteOnTheBlobStore(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	dev := start(t, work, slices.Concat(devArgs, []string{"--workers", "1", "--redis-server", "-", "--step-delay", "1ms"})...)
	info := devUp(t, work, dev)
	a := api{url: info.APIURL}
	code, body := a.do(t, http.MethodPost, "/runsync", []byte(withSeed(t, 11)))
	require.Equal(t, http.StatusOK, code, "%s", body)
	var st status
	require.NoError(t, json.Unmarshal(body, &st))
	require.Equal(t, proto.StatusCompleted, st.Status, "%s", body)
	item := st.Output.Images[0]
	require.Equal(t, proto.ItemBase64, item.Type)
	inline, err := base64.StdEncoding.DecodeString(item.Data)
	require.NoError(t, err)

	resp, err := http.Get(info.APIURL + "/v2/dev/files/" + st.ID + "/" + item.Filename)
	require.NoError(t, err)
	served, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", served)
	require.Equal(t, inline, served, "the file is the image /status inlines")
	require.Equal(t, "image/png", resp.Header.Get("Content-Type"))
	require.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"))
	require.Contains(t, resp.Header.Get("Content-Security-Policy"), "sandbox", "an output never runs script on the API's origin")
	require.Equal(t, `inline; filename=`+item.Filename, resp.Header.Get("Content-Disposition"))

	code, body = a.do(t, http.MethodGet, "/files/"+st.ID+"/other.png", nil)
	require.Equal(t, http.StatusNotFound, code)
	require.JSONEq(t, `{"error":"job `+st.ID+` has no file named other.png; its files: `+item.Filename+`"}`, string(body))
	code, body = a.do(t, http.MethodGet, "/files/no-such-job/x.png", nil)
	require.Equal(t, http.StatusNotFound, code, "%s", body)

	g := start(t, work, "get", st.ID)
	require.Equal(t, exitOK, g.wait(t, time.Minute), g.out.String())
	got, err := os.ReadFile(filepath.Join(work, st.ID, item.Filename))
	require.NoError(t, err, "the default folder is ./<job id>: %s", g.out)
	require.Equal(t, inline, got)
	g = start(t, work, "get", "no-such-job")
	require.Equal(t, exitNotAllDone, g.wait(t, time.Minute))
	require.Contains(t, g.out.String(), "comfyfleet get: job no-such-job not found")
	// watch is for batches: given a job's id it says what to use instead.
	w := start(t, work, "watch", st.ID)
	require.Equal(t, exitNotAllDone, w.wait(t, time.Minute))
	require.Contains(t, w.out.String(), st.ID+" is a job, not a batch: show it with comfyfleet status "+st.ID)
	devDown(t, work, dev)
}
