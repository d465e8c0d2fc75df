package deploy_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// fleetRedisDB is the Redis database the sim stack runs in: the binaries
// have no key prefix, so the stack gets a database of its own on the test
// Redis, emptied before and after.
const fleetRedisDB = 9

// startComposeNATS runs nats-server in-process from deploy/compose/nats.conf,
// on loopback ports and a temp store instead of the container's, and
// returns the client and monitoring addresses.
func startComposeNATS(t *testing.T) (client, monitor string) {
	t.Helper()
	opts := composeNATSOptions(t)
	opts.Host, opts.Port = "127.0.0.1", server.RANDOM_PORT
	opts.HTTPHost, opts.HTTPPort = "127.0.0.1", server.RANDOM_PORT
	opts.StoreDir = t.TempDir()
	opts.NoLog, opts.NoSigs = true, true
	srv, err := server.NewServer(opts)
	require.NoError(t, err)
	go srv.Start()
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	require.True(t, srv.ReadyForConnections(10*time.Second), "nats-server with nats.conf did not start")
	require.True(t, srv.JetStreamEnabled())
	return srv.Addr().String(), srv.MonitorAddr().String()
}

// fleetRedis returns the URL of the stack's Redis database, emptied.
func fleetRedis(t *testing.T) string {
	t.Helper()
	u, err := url.Parse(testenv.RedisURL())
	require.NoError(t, err)
	u.Path = fmt.Sprintf("/%d", fleetRedisDB)
	opts, err := redis.ParseURL(u.String())
	require.NoError(t, err)
	rdb := redis.NewClient(opts)
	ctx := testenv.Context(t, 10*time.Second)
	require.NoError(t, rdb.FlushDB(ctx).Err(), "redis at %s (run the tests with `make test`)", testenv.RedisURL())
	t.Cleanup(func() {
		rdb.FlushDB(context.Background())
		rdb.Close()
	})
	return u.String()
}

// process is one service replica running as a process.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

// stack maps compose's network (service:port) onto loopback ports.
type stack struct {
	t        *testing.T
	p        *types.Project
	addrs    map[string]string // "service:port" -> "127.0.0.1:N"
	shared   *strings.Replacer // other services' addresses
	procs    []*process
	provided map[string]bool // services the test provides itself
}

// own maps the listen addresses of service name's container ports.
func (s *stack) own(name, v string) string {
	for key, addr := range s.addrs {
		svc, port, _ := strings.Cut(key, ":")
		if svc != name {
			continue
		}
		if v == ":"+port {
			return addr
		}
		v = strings.ReplaceAll(v, "0.0.0.0:"+port, addr)
		v = strings.ReplaceAll(v, "127.0.0.1:"+port, addr)
	}
	return v
}

// mapped is a value of service name as the process sees it.
func (s *stack) mapped(name, v string) string { return s.own(name, s.shared.Replace(v)) }

func (s *stack) env(name string) []string {
	var env []string
	for k, v := range s.p.Services[name].Environment {
		require.NotNil(s.t, v, "%s: %s takes its value from the host", name, k)
		env = append(env, k+"="+s.mapped(name, *v))
	}
	return env
}

// serviceRef matches a reference to a compose service's address.
var serviceRef = regexp.MustCompile(`\b([a-z][a-z0-9-]*):(\d+)\b`)

// start starts service name's replicas and returns their environment.
func (s *stack) start(name string) []string {
	t := s.t
	svc := s.p.Services[name]
	require.NotNil(t, svc.Build, "%s: the test runs only images built from this repository", name)
	require.Equal(t, "deploy/Dockerfile", svc.Build.Dockerfile, name)
	require.Empty(t, svc.Entrypoint, "%s: the image's entrypoint is its binary", name)
	env := s.env(name)
	for _, kv := range env {
		if m := serviceRef.FindStringSubmatch(kv); m != nil {
			_, known := s.p.Services[m[1]]
			require.False(t, known, "%s: %s still points into compose's network", name, kv)
		}
	}
	var args []string
	for _, a := range svc.Command {
		args = append(args, s.mapped(name, a))
	}
	for i := range svc.GetScale() {
		pr := &process{name: fmt.Sprintf("%s-%d", name, i+1), out: &syncBuffer{}, done: make(chan struct{})}
		pr.cmd = exec.Command(bin(t, svc.Build.Target), args...)
		// GORACE: a binary built with -race waits 1 s at exit by default.
		pr.cmd.Env = append(slices.Clone(env), "GORACE=atexit_sleep_ms=0")
		pr.cmd.Stdout, pr.cmd.Stderr = pr.out, pr.out
		pr.cmd.WaitDelay = 5 * time.Second
		require.NoError(t, pr.cmd.Start(), pr.name)
		go func() { pr.err = pr.cmd.Wait(); close(pr.done) }()
		s.procs = append(s.procs, pr)
	}
	return env
}

// waitHealthy runs the service's compose health check until it passes, as
// compose does before it starts the services that depend on it.
func (s *stack) waitHealthy(name string, env []string) {
	t := s.t
	test := s.p.Services[name].HealthCheck.Test
	require.Equal(t, "CMD", test[0], name)
	probe, ok := strings.CutPrefix(test[1], "/usr/local/bin/")
	require.True(t, ok, name)
	var args []string
	for _, a := range test[2:] {
		args = append(args, s.own(name, a))
	}
	probeBin := bin(t, probe)
	var last []byte
	var exited *process
	healthy := func() bool {
		for _, pr := range s.procs {
			select {
			case <-pr.done:
				exited = pr
				return true
			default:
			}
		}
		cmd := exec.Command(probeBin, args...)
		cmd.Env = env
		var err error
		last, err = cmd.CombinedOutput()
		return err == nil
	}
	require.Eventually(t, healthy, 30*time.Second, 100*time.Millisecond, "%s never became healthy", name)
	if exited != nil {
		t.Fatalf("%s exited (%v) while waiting for %s to be healthy:\n%s", exited.name, exited.err, name, exited.out.String())
	}
	t.Logf("%s: %s", name, strings.TrimSpace(string(last)))
}

// stop sends SIGTERM to every process, last started first, as compose
// does, and checks that each exits cleanly.
func (s *stack) stop() {
	t := s.t
	for _, pr := range slices.Backward(s.procs) {
		pr.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-pr.done:
		case <-time.After(30 * time.Second):
			pr.cmd.Process.Kill()
			<-pr.done
			t.Errorf("%s did not stop on SIGTERM", pr.name)
		}
		if pr.err != nil {
			t.Errorf("%s: %v", pr.name, pr.err)
		}
		if strings.Contains(pr.out.String(), "DATA RACE") {
			t.Errorf("%s: data race", pr.name)
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", pr.name, pr.out.String())
		}
	}
}

// TestSimProfileRunsAJob starts the services of `docker compose --profile
// sim up` as plain processes, with the commands, environment, replicas,
// start order and health checks compose.yaml gives them (compose's network
// names mapped to loopback ports), and runs examples/txt2img.json through
// the RunPod API.
func TestSimProfileRunsAJob(t *testing.T) {
	t.Parallel()
	p := loadCompose(t, composeFile(), "sim")
	order, err := startOrder(p)
	require.NoError(t, err)

	natsAddr, monitor := startComposeNATS(t)
	redisURL := fleetRedis(t)
	s := &stack{t: t, p: p, addrs: map[string]string{"nats:4222": natsAddr},
		provided: map[string]bool{"nats": true, "redis": true, "s3": true}}
	for _, name := range order {
		if s.provided[name] {
			continue
		}
		svc := p.Services[name]
		ports := slices.Clone(svc.Expose)
		for _, pc := range svc.Ports {
			ports = append(ports, fmt.Sprint(pc.Target))
		}
		for _, port := range ports {
			s.addrs[name+":"+port] = "127.0.0.1:" + freePort(t)
		}
	}
	pairs := []string{"redis://redis:6379/0", redisURL}
	for k, v := range s.addrs {
		pairs = append(pairs, k, v)
	}
	s.shared = strings.NewReplacer(pairs...)

	// NATS answers compose's health check with this nats.conf.
	hc := p.Services["nats"].HealthCheck.Test
	resp, err := http.Get(strings.Replace(hc[len(hc)-1], "127.0.0.1:8222", monitor, 1))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "nats health check")

	// Like compose: start what has all its dependencies healthy, together,
	// and wait for their health checks before the next wave.
	healthy := maps.Clone(s.provided)
	t.Cleanup(s.stop)
	for len(healthy) < len(order) {
		var wave []string
		for _, name := range order {
			ready := !healthy[name]
			for dep := range p.Services[name].DependsOn {
				ready = ready && healthy[dep]
			}
			if ready {
				wave = append(wave, name)
			}
		}
		require.NotEmpty(t, wave)
		envs := map[string][]string{}
		for _, name := range wave {
			envs[name] = s.start(name)
		}
		for _, name := range wave {
			s.waitHealthy(name, envs[name])
			healthy[name] = true
		}
	}
	require.ElementsMatch(t, []string{"dispatcher-1", "dispatcher-2", "runpod-adapter-1", "comfysim-1-1", "comfysim-2-1",
		"gpuworker-sim1-1", "gpuworker-sim2-1"}, func() []string {
		var names []string
		for _, pr := range s.procs {
			names = append(names, pr.name)
		}
		return names
	}())

	api := "http://" + s.addrs["runpod-adapter:8000"]
	var health struct {
		Workers map[string]int `json:"workers"`
	}
	// A worker's heartbeat is there (its health check passes) a moment
	// before it reports itself idle.
	require.Eventually(t, func() bool {
		getJSON(t, api+"/health", &health)
		return health.Workers["ready"] == 2
	}, 20*time.Second, 20*time.Millisecond, "both sim workers are in the fleet: %v", health.Workers)

	body, err := os.ReadFile(repoPath("examples", "txt2img.json"))
	require.NoError(t, err)
	var job struct {
		ID       string `json:"id"`
		Status   string `json:"status"`
		WorkerID string `json:"workerId"`
		Error    string `json:"error"`
		Output   struct {
			Images []struct {
				Filename string `json:"filename"`
				Type     string `json:"type"`
				Data     string `json:"data"`
			} `json:"images"`
		} `json:"output"`
	}
	ctx := testenv.Context(t, 60*time.Second)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, api+"/v2/comfyfleet/runsync", bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", raw)
	require.NoError(t, json.Unmarshal(raw, &job), "%s", raw)
	require.Equal(t, "COMPLETED", job.Status, "%s", raw)
	require.Contains(t, []string{"local-sim1", "local-sim2"}, job.WorkerID)
	require.Len(t, job.Output.Images, 1)
	img := job.Output.Images[0]
	require.Equal(t, "base64", img.Type, "no BUCKET_ENDPOINT_URL: outputs come back inline")
	png, err := base64.StdEncoding.DecodeString(img.Data)
	require.NoError(t, err)
	require.True(t, bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")), "a PNG")

	// A batch producer with nats.conf's producer user (tenant "producer")
	// submits on its tenant's subject and follows its job to the end, as
	// examples/batch_producer.py does.
	pc, _ := natsUser(t, natsAddr, "producer", nats.CustomInboxPrefix("_INBOX_producer"))
	final := make(chan *nats.Msg, 1)
	_, err = pc.ChanSubscribe(proto.TenantEventSubjects("producer", proto.EventClassFinal), final)
	require.NoError(t, err)
	require.NoError(t, pc.Flush())
	var input struct {
		Input json.RawMessage `json:"input"`
	}
	require.NoError(t, json.Unmarshal(body, &input))
	msg, err := json.Marshal(map[string]any{"id": "sim-batch-1", "input": input.Input})
	require.NoError(t, err)
	pjs, err := jetstream.New(pc)
	require.NoError(t, err)
	_, err = pjs.PublishMsg(ctx, &nats.Msg{Subject: proto.SubmitSubject(proto.SourceBatch, "producer"), Data: msg,
		Header: nats.Header{proto.MsgIDHeader: []string{"sim-batch-1"}}})
	require.NoError(t, err)
	select {
	case m := <-final:
		require.Equal(t, "cf.events.sim-batch-1.final.producer", m.Subject)
		ev, err := proto.DecodeEvent(m.Data)
		require.NoError(t, err)
		require.Equal(t, proto.StatusCompleted, ev.Status, "%s", m.Data)
		require.Equal(t, "producer", ev.Tenant)
	case <-ctx.Done():
		t.Fatal("the producer's job did not finish")
	}

	// The API's other routes under the adapter's user: /stream reads the
	// events, a failed job's /retry reads the kept request and queues it
	// again, /cancel fans out, /purge-queue deletes from the streams.
	call := func(method, path, body string) map[string]any {
		req, err := http.NewRequestWithContext(ctx, method, api+path, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s %s: %s", method, path, raw)
		var out map[string]any
		require.NoError(t, json.Unmarshal(raw, &out), "%s", raw)
		return out
	}
	stream := call("GET", "/stream/"+job.ID, "")
	require.Equal(t, "COMPLETED", stream["status"], "%v", stream)
	bad := call("POST", "/runsync", `{"input":{"workflow":{"1":{"class_type":"NoSuchNode","inputs":{}}}}}`)
	require.Equal(t, "FAILED", bad["status"], "%v", bad)
	retried := call("POST", "/retry/"+bad["id"].(string), "")
	require.Equal(t, "IN_QUEUE", retried["status"], "%v", retried)
	require.Eventually(t, func() bool {
		return call("GET", "/status/"+bad["id"].(string), "")["status"] == "FAILED"
	}, 20*time.Second, 50*time.Millisecond, "the retry ran (and failed again)")
	queued := call("POST", "/run", `{"input":{"workflow":{"1":{"class_type":"NoSuchNode","inputs":{}}}},"policy":{"lowPriority":true}}`)
	cancelled := call("POST", "/cancel/"+queued["id"].(string), "")
	require.Contains(t, []any{"CANCELLED", "FAILED"}, cancelled["status"], "%v", cancelled)
	require.Equal(t, "completed", call("POST", "/purge-queue", "")["status"])
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", url, raw)
	require.NoError(t, json.Unmarshal(raw, v), "%s", raw)
}
