package worker_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/comfysim/simtest"
	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/internal/worker"
	"github.com/comfyfleet/comfyfleet/proto"
)

// observed is a zaptest logger whose entries the test can also read.
func observed(t *testing.T) (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(zapcore.NewTee(zaptest.NewLogger(t).Core(), core)), logs
}

// startSweeper runs the sweeper every dispatcher runs (lifecycle.Sweeper)
// on the bundle's core; its cleanup stops it.
func (b *bundle) startSweeper(cfg lifecycle.SweeperConfig) {
	b.t.Helper()
	sw, err := b.core.NewSweeper(cfg)
	require.NoError(b.t, err)
	require.NoError(b.t, sw.Start(context.Background()))
	b.t.Cleanup(sw.Stop)
}

// events collects a job's events, decoded.
type events struct {
	mu  sync.Mutex
	evs []*proto.Event
}

func (b *bundle) events(jobID string) *events {
	b.t.Helper()
	e := &events{}
	stop, err := b.q.SubscribeEvents(jobID, func(ev *proto.Event) {
		e.mu.Lock()
		e.evs = append(e.evs, ev)
		e.mu.Unlock()
	})
	require.NoError(b.t, err)
	require.NoError(b.t, b.q.Flush(testenv.Context(b.t, 5*time.Second)))
	b.t.Cleanup(stop)
	return e
}

// of returns the status events of one attempt.
func (e *events) of(attempt int) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, ev := range e.evs {
		if ev.Type == proto.EventStatus && ev.Attempt == attempt {
			out = append(out, fmt.Sprintf("%s %s %s", ev.Status, ev.WorkerID, ev.Error))
		}
	}
	return out
}

// partition is a go-redis hook that fails every command while cut is set:
// the worker whose client has it is cut off from Redis, the rest of the
// fleet is not.
type partition struct{ cut atomic.Bool }

var errPartitioned = errors.New("partitioned from redis (test)")

func (p *partition) DialHook(next redis.DialHook) redis.DialHook { return next }

func (p *partition) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if p.cut.Load() {
			cmd.SetErr(errPartitioned)
			return errPartitioned
		}
		return next(ctx, cmd)
	}
}

func (p *partition) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if p.cut.Load() {
			for _, c := range cmds {
				c.SetErr(errPartitioned)
			}
			return errPartitioned
		}
		return next(ctx, cmds)
	}
}

// partitionedDB is the bundle's Redis on a client of its own that p can
// cut off.
func (b *bundle) partitionedDB(p *partition) *rdb.DB {
	b.t.Helper()
	opts, err := redis.ParseURL(testenv.RedisURL())
	require.NoError(b.t, err)
	rc := redis.NewClient(opts)
	b.t.Cleanup(func() { rc.Close() })
	rc.AddHook(p)
	return rdb.New(rc, rdb.Options{Prefix: b.prefix, WorkerTTL: 3 * time.Second})
}

// TestLeaseTakenOverStopsThePromptAndWritesNothing: a worker cut off from
// Redis cannot renew its lease; the sweeper hands the job to another
// worker. The moment the first can reach Redis again its next renewal
// says the lease is lost: it interrupts its prompt in ComfyUI within a
// lease period and drops the job without a write, and the job completes
// once, on the second worker.
func TestLeaseTakenOverStopsThePromptAndWritesNothing(t *testing.T) {
	t.Parallel()
	const leaseTTL = 1500 * time.Millisecond
	b := setup(t)
	b.sim.SetFault(comfysim.Fault{HangAtStep: 2}) // w1's prompt runs until it is stopped
	b.startSweeper(lifecycle.SweeperConfig{Every: 25 * time.Millisecond})
	evs := b.events("taken")
	var cut partition
	log1, logs1 := observed(t)
	b.startWorker("w1", worker.Config{LeaseTTL: leaseTTL}, workerOpts{db: b.partitionedDB(&cut), logger: log1})
	b.enqueue("taken", input(sampler("1", 4)+save("9", "t")))
	rec := b.wait("taken", proto.StatusInProgress)
	require.Equal(t, "w1", rec.WorkerID)
	eventually(t, func() bool { return b.sim.Stats().Running != "" }, "w1's prompt never ran")

	sim2 := simtest.Start(t, comfysim.Config{StepDelay: time.Millisecond})
	sim2.SetFault(comfysim.Fault{HangAtStep: 2}) // held until w1 is seen to have let go
	b.startWorker("w2", worker.Config{LeaseTTL: leaseTTL}, workerOpts{sim: sim2})

	// w1 loses Redis: its lease lapses, the sweeper hands the job back,
	// w2 claims it.
	cut.cut.Store(true)
	eventually(t, func() bool {
		r, err := b.db.Get(context.Background(), "taken")
		return err == nil && r.Status == proto.StatusInProgress && r.Attempt == 2
	}, "the job was never handed to another worker")
	cut.cut.Store(false)
	takenOver := time.Now()
	rec = b.wait("taken", proto.StatusInProgress)
	require.Equal(t, "w2", rec.WorkerID)
	require.Equal(t, 1, rec.Retries)

	// w1's next renewal says the lease is lost: its prompt is stopped.
	eventually(t, func() bool {
		st := b.sim.Stats()
		return st.PromptsInterrupted == 1 && st.Running == "" && st.QueueRemaining == 0
	}, "w1's prompt still runs in its ComfyUI")
	stopped := time.Since(takenOver)
	t.Logf("w1 stopped its prompt %v after the takeover", stopped)
	require.Less(t, stopped, leaseTTL, "w1 stopped its prompt within a lease period")
	eventually(t, func() bool {
		return logs1.FilterMessageSnippet("lease lost while running").Len() == 1
	}, "w1 did not drop the job")

	// Nothing of attempt 1 landed after the takeover: the record is still
	// w2's running attempt, and attempt 1's only events are its start and
	// the sweeper's hand-back.
	rec = b.wait("taken", proto.StatusInProgress)
	require.Equal(t, 2, rec.Attempt)
	require.Equal(t, "w2", rec.WorkerID)
	require.Equal(t, []string{"IN_PROGRESS w1 ", "IN_QUEUE w1 " + proto.MsgLeaseLapsed}, evs.of(1))
	require.Zero(t, logs1.FilterMessage("end job").Len(), "w1 tried to end the job")

	// The job completes once, on w2, with w2's result.
	sim2.SetFault(comfysim.Fault{})
	rec = b.wait("taken", proto.StatusCompleted)
	require.Equal(t, 2, rec.Attempt)
	require.Equal(t, "w2", rec.WorkerID)
	require.Len(t, b.output(rec).Images, 1)
	b.requireDrained()
	require.Equal(t, []string{"IN_PROGRESS w2 ", "COMPLETED w2 "}, evs.of(2))
	require.Zero(t, b.sim.Stats().PromptsSucceeded, "w1 never finished its prompt")
	require.EqualValues(t, 1, sim2.Stats().PromptsSucceeded)
	counts, err := b.db.Counts(context.Background())
	require.NoError(t, err)
	require.EqualValues(t, 1, counts[proto.StatusCompleted], "completed once")
}

// redisServer is a redis-server of the test's own, on a random port, whose
// append-only file is synced on every write: it can be killed and started
// again with its data.
type redisServer struct {
	t    *testing.T
	port int
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
}

func startRedisServer(t *testing.T) *redisServer {
	t.Helper()
	_, port, err := net.SplitHostPort(testenv.FreeAddr(t))
	require.NoError(t, err)
	p, err := strconv.Atoi(port)
	require.NoError(t, err)
	r := &redisServer{t: t, port: p, dir: t.TempDir()}
	r.start()
	t.Cleanup(r.kill)
	return r
}

func (r *redisServer) addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

// client is a client of the server. Its pool is larger than the dial
// errors of an outage can count, so that go-redis never opens its dial
// circuit breaker, whose probe goroutine outlives the client by up to a
// second (goleak); the outage is the server's, not the client's.
func (r *redisServer) client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: r.addr(), PoolSize: 1 << 20})
}

// start runs the server and waits until it answers.
func (r *redisServer) start() {
	r.t.Helper()
	r.cmd = exec.Command("redis-server", "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1", "--dir", r.dir,
		"--save", "", "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "no")
	require.NoError(r.t, r.cmd.Start(), "start redis-server")
	done := make(chan struct{})
	r.done = done
	go func(cmd *exec.Cmd) { _ = cmd.Wait(); close(done) }(r.cmd)
	rc := r.client()
	defer rc.Close()
	require.Eventually(r.t, func() bool { return rc.Ping(context.Background()).Err() == nil },
		10*time.Second, 10*time.Millisecond, "redis-server on %s answers", r.addr())
}

// kill ends the server at once (SIGKILL: nothing is lost, every write was
// synced) and waits for it to die.
func (r *redisServer) kill() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	select {
	case <-r.done:
		return
	default:
	}
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.done
}

// TestRedisOutageShorterThanTheJobCostsNoAttempt takes Redis away from a
// fleet of one worker and one sweeper while a job runs, for longer than
// the job's lease and than the sweeper's outage threshold: the worker
// keeps running while its renewals fail, its lease comes back to life at
// the first renewal after Redis returns (the sweeper waits LEASE_GRACE
// after the gap before reclaiming), and the job completes on its first
// attempt without a retry.
func TestRedisOutageShorterThanTheJobCostsNoAttempt(t *testing.T) {
	t.Parallel()
	const (
		leaseTTL = 900 * time.Millisecond
		// outage is past the lease and well past the sweeper's gap
		// threshold (max(3 sweeps, 3 s)), which is what makes it an
		// outage for the sweeper (3.5 s left too little margin on a
		// loaded machine).
		outage = 5 * time.Second
		// ackWait is shorter than the outage.
		ackWait = 2 * time.Second
	)
	srv := startRedisServer(t)
	rc := srv.client()
	t.Cleanup(func() { rc.Close() })
	b := setupOn(t, rc, "test:outage:")
	swLog, swLogs := observed(t)
	b.core = lifecycle.New(b.db, b.q, swLog)
	b.startSweeper(lifecycle.SweeperConfig{Every: 50 * time.Millisecond, LeaseGrace: 3 * time.Second})
	b.sim.SetFault(comfysim.Fault{HangAtStep: 2}) // the job runs until the test lets it finish
	log, logs := observed(t)
	cfg := worker.Config{LeaseTTL: leaseTTL, AckWait: ackWait}
	b.startWorker("w1", cfg, workerOpts{logger: log})
	b.enqueue("outlast", input(sampler("1", 4)+save("9", "o")))
	b.wait("outlast", proto.StatusInProgress)
	eventually(t, func() bool { return b.sim.Stats().Running != "" }, "the prompt never ran")
	// An idle worker that the job's delivery would reach, were it to go
	// AckWait without a heartbeat while Redis is away.
	idle := simtest.Start(t, comfysim.Config{StepDelay: time.Millisecond})
	b.startWorker("w2", cfg, workerOpts{sim: idle})

	srv.kill()
	down := time.Now()
	require.Eventually(t, func() bool {
		return time.Since(down) > outage && logs.FilterMessage("renew job lease").Len() >= 3
	}, 30*time.Second, 10*time.Millisecond, "the worker's renewals did not fail")
	require.NotEmpty(t, b.sim.Stats().Running, "the prompt still runs while Redis is away")
	srv.start()
	t.Logf("Redis was away for %v", time.Since(down))
	rec, err := b.db.Get(context.Background(), "outlast")
	require.NoError(t, err, "the record survived the restart")
	require.Equal(t, proto.StatusInProgress, rec.Status)

	// The worker's next renewal brings the lapsed lease back, before the
	// sweeper (waiting out LEASE_GRACE after the gap) may reclaim it.
	require.Eventually(t, func() bool {
		lapsed, err := b.db.LapsedLeases(context.Background(), 10)
		return err == nil && len(lapsed) == 0
	}, 10*time.Second, 10*time.Millisecond, "the lease never came back")
	if !assert.Eventually(t, func() bool {
		return swLogs.FilterMessageSnippet("lease reclaims wait for the workers to renew").Len() > 0
	}, 30*time.Second, 5*time.Millisecond, "the sweeper did not see the outage") {
		// Where the sweeper waits, for whoever reads the failure.
		var stacks strings.Builder
		_ = pprof.Lookup("goroutine").WriteTo(&stacks, 1)
		t.Fatalf("goroutines:\n%s", stacks.String())
	}
	rec = b.wait("outlast", proto.StatusInProgress)
	require.Equal(t, 1, rec.Attempt)
	require.Equal(t, "w1", rec.WorkerID)

	b.sim.SetFault(comfysim.Fault{})
	rec = b.wait("outlast", proto.StatusCompleted)
	require.Equal(t, 1, rec.Attempt, "no attempt charged")
	require.Equal(t, 0, rec.Retries)
	require.Equal(t, "w1", rec.WorkerID)
	require.Len(t, b.output(rec).Images, 1)
	errs, err := b.db.AttemptErrors(context.Background(), "outlast")
	require.NoError(t, err)
	require.Empty(t, errs, "no failed attempt logged")
	b.requireDrained()
	require.EqualValues(t, 1, b.sim.Stats().PromptsSucceeded, "the prompt ran once")
	require.Zero(t, b.sim.Stats().PromptsInterrupted)
	require.Zero(t, idle.Stats().PromptsQueued, "the idle worker never ran it")
}
