package chaos_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/comfysim/simtest"
	"github.com/comfyfleet/comfyfleet/internal/natsserver"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// binaries are built once for the whole suite, without -race: the race
// detector would slow the fleet down more than it would find here.
var binaries struct {
	once sync.Once
	dir  string
	out  []byte
	err  error
}

func bin(t *testing.T, name string) string {
	t.Helper()
	binaries.once.Do(func() {
		binaries.dir, binaries.err = os.MkdirTemp(tmpRoot(), "comfyfleet-chaos-bin-")
		if binaries.err != nil {
			return
		}
		cmd := exec.Command(goTool(), "build", "-o", binaries.dir+string(filepath.Separator), "./cmd/gpuworker", "./cmd/dispatcher")
		cmd.Dir = repoRoot()
		binaries.out, binaries.err = cmd.CombinedOutput()
	})
	require.NoError(t, binaries.err, "go build: %s", binaries.out)
	return filepath.Join(binaries.dir, name)
}

func removeBinaries() {
	if binaries.dir != "" {
		_ = os.RemoveAll(binaries.dir)
	}
}

// goTool is the go command: go test puts GOROOT/bin first on the test's
// PATH.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "go"
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// tmpRoot is tmpfs when there is one: the fleet's stores write a lot.
func tmpRoot() string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		return "/dev/shm"
	}
	return os.TempDir()
}

func tempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp(tmpRoot(), "chaos-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// syncBuffer collects a process's output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// proc is a child process.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

func startProc(t *testing.T, name, path string, args, env []string) *proc {
	t.Helper()
	p := &proc{name: name, out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(path, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	require.NoError(t, p.cmd.Start(), "start %s", name)
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("--- output of %s ---\n%s", name, tail(p.out.String(), 4000))
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// kill sends SIGKILL and waits for the process to die.
func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM, then SIGKILL after 10 s.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.kill()
	}
}

// fleet is one fault-injection case's world.
type fleet struct {
	t   *testing.T
	dir string
	log *zap.Logger

	natsPort int
	natsDir  string
	natsMu   sync.Mutex
	nats     *natsserver.Server
	// cluster, when the case runs one, replaces the single server: its
	// streams have a replica on each node (STREAM_REPLICAS).
	cluster  *testenv.Cluster
	replicas int

	redisPort int
	redisDir  string
	redis     *proc
	// sentinel, when the case runs one, replaces the single redis-server:
	// a master, two replicas and three sentinels, every process reaching
	// the master through the sentinels and waiting for one replica per
	// transition (REDIS_WAIT_REPLICAS's default behind Sentinel).
	sentinel *testenv.RedisSentinel

	execGrace   time.Duration
	leaseTTL    time.Duration
	maxAttempts int

	sims        []*simtest.Sim
	workers     map[string]*proc
	dispatchers []*proc
	apis        []string // each dispatcher's HTTP API
	nextWorker  int

	b *backend.Backend
	// js reads the streams directly, as an operator would: the events and
	// what is left on the jobs stream.
	js jetstream.JetStream
}

type fleetConfig struct {
	workers, dispatchers int
	stepDelay            time.Duration
	// execGrace is the dispatchers' EXECUTION_GRACE; 0 means 5 s.
	execGrace time.Duration
	// leaseTTL is the workers' LEASE_TTL; 0 means 900 ms.
	leaseTTL time.Duration
	// maxAttempts is the workers' MAX_ATTEMPTS; 0 means the binary's
	// default (3).
	maxAttempts int
	// natsNodes, when above 1, runs a NATS cluster of that many nodes
	// instead of one server, every stream with a replica on each.
	natsNodes int
	// redisSentinel runs Redis with Sentinel failover instead of one
	// redis-server (fleet.sentinel).
	redisSentinel bool
	// replicationProxied puts a proxy between the master and each
	// replica, so that the case can hold replication back
	// (testenv.SentinelConfig.Proxied).
	replicationProxied bool
}

func newFleet(t *testing.T, cfg fleetConfig) *fleet {
	t.Helper()
	f := &fleet{t: t, dir: tempDir(t), log: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), workers: map[string]*proc{}}
	if cfg.natsNodes > 1 {
		f.cluster, f.replicas = testenv.StartNATSCluster(t, cfg.natsNodes), cfg.natsNodes
	} else {
		f.natsPort, f.natsDir, f.replicas = freePort(t), filepath.Join(f.dir, "nats"), 1
		f.startNATS()
		t.Cleanup(f.stopNATS)
	}
	bcfg := backend.Config{Name: "chaos", NATSURL: f.natsURL(), Queue: queue.Config{Replicas: f.replicas}, Logger: f.log}
	if cfg.redisSentinel {
		f.sentinel = testenv.StartRedisSentinel(t, testenv.SentinelConfig{Proxied: cfg.replicationProxied})
		// Port 1 answers nothing: only the sentinels can lead to Redis.
		f.redisPort = 1
		bcfg.RedisSentinel = rdb.Sentinel{Addrs: f.sentinel.Sentinels, MasterName: f.sentinel.MasterName}
		bcfg.DB.WaitReplicas = 1
	} else {
		f.redisPort, f.redisDir = freePort(t), filepath.Join(f.dir, "redis")
		require.NoError(t, os.MkdirAll(f.redisDir, 0o755))
		f.startRedis()
	}
	bcfg.RedisURL = f.redisURL()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := backend.Open(ctx, bcfg)
	require.NoError(t, err)
	f.b = b
	t.Cleanup(b.Close)
	nc, err := nats.Connect(f.natsURL(), nats.MaxReconnects(-1))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	f.js, err = jetstream.New(nc)
	require.NoError(t, err)

	f.execGrace, f.leaseTTL, f.maxAttempts = cfg.execGrace, cfg.leaseTTL, cfg.maxAttempts
	if f.leaseTTL == 0 {
		f.leaseTTL = 900 * time.Millisecond
	}
	if f.execGrace == 0 {
		f.execGrace = 5 * time.Second
	}
	for range cfg.dispatchers {
		f.startDispatcher()
	}
	for range cfg.workers {
		sim := simtest.Start(t, comfysim.Config{Dir: filepath.Join(f.dir, fmt.Sprintf("sim%d", len(f.sims))), StepDelay: cfg.stepDelay})
		f.sims = append(f.sims, sim)
		f.startWorker(sim)
	}
	// Jobs are admitted against the models the live workers report:
	// load only once every worker has announced itself.
	require.Eventually(t, func() bool {
		ws, err := f.b.DB.Workers(context.Background())
		if err != nil {
			return false
		}
		idle := 0
		for _, w := range ws {
			if w.State == proto.WorkerIdle {
				idle++
			}
		}
		return idle == cfg.workers
	}, 30*time.Second, 20*time.Millisecond, "every worker idle")
	return f
}

// natsURL is the server's URL, or every node's of a cluster.
func (f *fleet) natsURL() string {
	if f.cluster != nil {
		return f.cluster.URL()
	}
	return fmt.Sprintf("nats://127.0.0.1:%d", f.natsPort)
}
func (f *fleet) redisURL() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", f.redisPort) }

// redisEnv are a fleet process's Redis settings. Behind Sentinel the
// processes wait for one replica per transition by default
// (REDIS_WAIT_REPLICAS unset), which the sentinel cases rely on.
func (f *fleet) redisEnv() []string {
	env := []string{"REDIS_URL=" + f.redisURL()}
	if f.sentinel != nil {
		env = append(env, "REDIS_SENTINELS="+f.sentinel.SentinelList(), "REDIS_MASTER_NAME="+f.sentinel.MasterName)
	}
	return env
}

func (f *fleet) startNATS() {
	f.t.Helper()
	srv, err := natsserver.Start(natsserver.Config{Port: f.natsPort, StoreDir: f.natsDir})
	require.NoError(f.t, err)
	f.natsMu.Lock()
	f.nats = srv
	f.natsMu.Unlock()
}

func (f *fleet) stopNATS() {
	f.natsMu.Lock()
	srv := f.nats
	f.natsMu.Unlock()
	srv.Stop()
}

// startRedis runs a dedicated redis-server whose append-only file is
// synced on every write, so a SIGKILL loses nothing.
func (f *fleet) startRedis() {
	f.t.Helper()
	f.redis = startProc(f.t, "redis-server", "redis-server", []string{
		"--port", strconv.Itoa(f.redisPort), "--bind", "127.0.0.1", "--dir", f.redisDir,
		"--save", "", "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "no",
	}, nil)
	rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", f.redisPort)})
	defer rdb.Close()
	require.Eventually(f.t, func() bool {
		return rdb.Ping(context.Background()).Err() == nil
	}, 10*time.Second, 20*time.Millisecond, "redis-server answers")
}

func (f *fleet) startDispatcher() *proc {
	f.t.Helper()
	name := fmt.Sprintf("dispatcher-%d", len(f.dispatchers)+1)
	port := freePort(f.t)
	p := startProc(f.t, name, bin(f.t, "dispatcher"), nil, append(f.redisEnv(),
		"NATS_URL="+f.natsURL(), "STREAM_REPLICAS="+strconv.Itoa(f.replicas), "SWEEP_INTERVAL=100ms", "INTAKE_ACK_WAIT=2s",
		"EXECUTION_GRACE="+f.execGrace.String(), "LOG_LEVEL=warn", fmt.Sprintf("LISTEN_ADDR=127.0.0.1:%d", port),
	))
	f.dispatchers = append(f.dispatchers, p)
	f.apis = append(f.apis, fmt.Sprintf("http://127.0.0.1:%d", port))
	return p
}

func (f *fleet) startWorker(sim *simtest.Sim) *proc {
	f.t.Helper()
	f.nextWorker++
	id := fmt.Sprintf("w%d", f.nextWorker)
	env := append(f.redisEnv(),
		"NATS_URL="+f.natsURL(), "STREAM_REPLICAS="+strconv.Itoa(f.replicas), "COMFYUI_URL="+sim.URL,
		"WORKER_ID="+id, "LEASE_TTL="+f.leaseTTL.String(), "COMFYUI_PROBE_INTERVAL=50ms", "RETRY_DELAY=50ms",
		"SHUTDOWN_GRACE=2s", "LOG_LEVEL=warn",
	)
	if f.maxAttempts > 0 {
		env = append(env, fmt.Sprintf("MAX_ATTEMPTS=%d", f.maxAttempts))
	}
	p := startProc(f.t, "gpuworker-"+id, bin(f.t, "gpuworker"), nil, env)
	f.workers[id] = p
	return p
}

// killWorker SIGKILLs one worker at random and starts a replacement on the
// same ComfyUI.
func (f *fleet) killWorker(rng *rand.Rand) string {
	ids := make([]string, 0, len(f.workers))
	for id := range f.workers {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	id := ids[rng.IntN(len(ids))]
	f.workers[id].kill()
	delete(f.workers, id)
	n, _ := strconv.Atoi(strings.TrimPrefix(id, "w"))
	f.startWorker(f.sims[(n-1)%len(f.sims)])
	return id
}

// workflow is a small txt2img prompt; the seed varies per job.
func workflow(seed int) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"workflow":{
"4":{"class_type":"CheckpointLoaderSimple","inputs":{"ckpt_name":"v1-5-pruned-emaonly.safetensors"}},
"5":{"class_type":"EmptyLatentImage","inputs":{"width":64,"height":64,"batch_size":1}},
"6":{"class_type":"CLIPTextEncode","inputs":{"text":"a lighthouse","clip":["4",1]}},
"7":{"class_type":"CLIPTextEncode","inputs":{"text":"blurry","clip":["4",1]}},
"3":{"class_type":"KSampler","inputs":{"seed":%d,"steps":6,"cfg":7,"sampler_name":"euler","scheduler":"normal","denoise":1,"model":["4",0],"positive":["6",0],"negative":["7",0],"latent_image":["5",0]}},
"8":{"class_type":"VAEDecode","inputs":{"samples":["3",0],"vae":["4",2]}},
"9":{"class_type":"SaveImage","inputs":{"filename_prefix":"chaos","images":["8",0]}}}}`, seed))
}

// submit publishes a job on the intake, retrying while NATS is away (the
// job id makes a repeat harmless).
func (f *fleet) submit(ctx context.Context, job *proto.Job) {
	f.t.Helper()
	for {
		_, err := f.b.Queue.Submit(ctx, proto.SourceBatch, job)
		if err == nil || errors.Is(err, queue.ErrDuplicate) {
			return
		}
		if ctx.Err() != nil {
			f.t.Fatalf("submit %s: %v", job.ID, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// tally is what became of the jobs of a case.
type tally struct {
	submitted int
	byStatus  map[proto.Status]int
	// final is each terminal job's status.
	final map[string]proto.Status
	stuck []string
	// completed counts each job's COMPLETED events.
	completed map[string]int
	// completedTwice lists jobs with more than one COMPLETED event.
	completedTwice []string
	// reachedGPU lists jobs with an IN_PROGRESS event.
	reachedGPU map[string]bool
	// retried counts the jobs that needed more than one attempt.
	retried int
}

func (tl tally) String() string {
	keys := make([]string, 0, len(tl.byStatus))
	for s := range tl.byStatus {
		keys = append(keys, string(s))
	}
	sort.Strings(keys)
	var parts []string
	terminal := 0
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, tl.byStatus[proto.Status(k)]))
		terminal += tl.byStatus[proto.Status(k)]
	}
	return fmt.Sprintf("submitted=%d terminal=%d (%s) stuck=%d completed_twice=%d retried=%d",
		tl.submitted, terminal, strings.Join(parts, " "), len(tl.stuck), len(tl.completedTwice), tl.retried)
}

// await waits until every job is terminal (or the deadline) and counts.
func (f *fleet) await(ids []string, within time.Duration) tally {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	final := map[string]proto.Status{}
	retried := 0
	for len(final) < len(ids) && ctx.Err() == nil {
		for _, id := range ids {
			if _, ok := final[id]; ok {
				continue
			}
			rec, err := f.b.DB.Get(ctx, id)
			if err == nil && rec.Status.Terminal() {
				final[id] = rec.Status
				if rec.Retries > 0 {
					retried++
				}
				if rec.Status == proto.StatusCompleted {
					require.NotEmpty(f.t, rec.Output, "job %s completed without output", id)
				}
			}
		}
		if len(final) < len(ids) {
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	tl := tally{submitted: len(ids), byStatus: map[proto.Status]int{}, final: final, reachedGPU: map[string]bool{}, retried: retried}
	for _, id := range ids {
		st, ok := final[id]
		if !ok {
			tl.stuck = append(tl.stuck, id)
			// Where it stuck, for whoever reads the failure.
			rec, err := f.b.DB.Get(context.Background(), id)
			if err != nil {
				f.t.Logf("stuck job %s: %v", id, err)
			} else {
				f.t.Logf("stuck job %s: %s, attempt %d, worker %q, submitted %s, started %s", id, rec.Status, rec.Attempt, rec.WorkerID, rec.SubmittedAt.Format(time.StampMilli), rec.StartedAt.Format(time.StampMilli))
			}
			continue
		}
		tl.byStatus[st]++
	}
	tl.completed = f.events(tl.reachedGPU)
	for id, n := range tl.completed {
		if n > 1 {
			tl.completedTwice = append(tl.completedTwice, id)
		}
	}
	return tl
}

// events reads the whole events stream: COMPLETED events per job, and
// which jobs ever went IN_PROGRESS.
func (f *fleet) events(reached map[string]bool) map[string]int {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, err := f.js.OrderedConsumer(ctx, proto.EventsStream, jetstream.OrderedConsumerConfig{})
	require.NoError(f.t, err)
	info, err := cons.Info(ctx)
	require.NoError(f.t, err)
	left := info.NumPending
	completed := map[string]int{}
	for left > 0 {
		batch, err := cons.Fetch(int(min(left, 500)), jetstream.FetchMaxWait(5*time.Second))
		require.NoError(f.t, err)
		got := 0
		for m := range batch.Messages() {
			got++
			ev, err := proto.DecodeEvent(m.Data())
			if err != nil || ev.Type != proto.EventStatus {
				continue
			}
			switch ev.Status {
			case proto.StatusCompleted:
				completed[ev.JobID]++
			case proto.StatusInProgress:
				reached[ev.JobID] = true
			}
		}
		require.NoError(f.t, batch.Error())
		require.NotZero(f.t, got, "events stream stalled with %d left", left)
		left -= uint64(got)
	}
	return completed
}

// jobsLeft is how many messages remain on the jobs stream.
func (f *fleet) jobsLeft() uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := f.js.Stream(ctx, proto.JobsStream)
	if err != nil {
		return 1 << 62
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 1 << 62
	}
	return info.State.Msgs
}

// check asserts the invariants of every case: every job submitted ended
// (none stuck), none completed twice, every job message is settled, and
// every job ended COMPLETED unless ended names another ending for it (the
// jobs a case cancels, lets expire or fails on purpose). A fault a case
// injects must never cost a job its result: a FAILED job is a failure of
// the case, not an ending like any other.
func (f *fleet) check(name string, tl tally, ended map[string]proto.Status) {
	f.t.Helper()
	f.t.Logf("%s: %s", name, tl)
	require.Empty(f.t, tl.stuck, "jobs not terminal")
	require.Empty(f.t, tl.completedTwice, "jobs completed twice")
	terminal := 0
	for _, n := range tl.byStatus {
		terminal += n
	}
	require.Equal(f.t, tl.submitted, terminal)
	var wrong []string
	for id, got := range tl.final {
		want, ok := ended[id]
		if !ok {
			want = proto.StatusCompleted
		}
		if got == want {
			continue
		}
		why := ""
		if rec, err := f.b.DB.Get(context.Background(), id); err == nil && rec.Error != "" {
			why = fmt.Sprintf(" (%s, attempt %d)", rec.Error, rec.Attempt)
		}
		wrong = append(wrong, fmt.Sprintf("%s: %s%s, want %s", id, got, why, want))
	}
	sort.Strings(wrong)
	require.Empty(f.t, wrong, "%d of %d jobs did not end as they should", len(wrong), tl.submitted)
	start := time.Now()
	require.Eventually(f.t, func() bool { return f.jobsLeft() == 0 }, 45*time.Second, 100*time.Millisecond,
		"every job message is settled")
	f.t.Logf("%s: every job message settled %v after the last job ended", name, time.Since(start).Round(10*time.Millisecond))
}
