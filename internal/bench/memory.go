package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/backend"
	"github.com/comfyfleet/comfyfleet/internal/comfysim"
	"github.com/comfyfleet/comfyfleet/internal/flagenv"
	"github.com/comfyfleet/comfyfleet/internal/fleet"
	"github.com/comfyfleet/comfyfleet/internal/role"
	"github.com/comfyfleet/comfyfleet/proto"
)

// MemoryResult is what the memory scenario measured: the resident memory
// of one role's process under one kind of load each. The measured role
// runs in a process of its own (this binary re-executed, see Child),
// against a stack in the bench's process that holds everything else
// (NATS, Redis, the other roles, the emulator, versitygw's client side);
// its resident set is read from /proc/<pid>/status every 20 ms (VmRSS),
// and the kernel's peak (VmHWM) at the end.
type MemoryResult struct {
	// Method says how the figures were taken.
	Method     string            `json:"method"`
	Worker     *WorkerMemory     `json:"worker,omitempty"`
	Dispatcher *DispatcherMemory `json:"dispatcher,omitempty"`
	Adapter    *AdapterMemory    `json:"adapter,omitempty"`
	// NotRun says, by part, why one did not run.
	NotRun map[string]string `json:"not_run,omitempty"`
}

// WorkerMemory is a gpuworker streaming one large output from ComfyUI's
// /view to S3 (versitygw): the emulator's SaveImage file padded to
// OutputBytes with a sparse tail (its PadOutputsTo fault), so neither
// side renders or holds it.
type WorkerMemory struct {
	OutputBytes int64 `json:"output_bytes"`
	// StoredBytes is what the bucket holds after the job; Seconds the
	// job's time from submission to its terminal event.
	StoredBytes int64   `json:"stored_bytes"`
	Seconds     float64 `json:"seconds"`
	MiBPerSec   float64 `json:"mib_per_s"`
	Status      string  `json:"status"`
	RSS         RSS     `json:"rss"`
}

// DispatcherMemory is a dispatcher admitting Queued jobs that no one
// takes, with Workers simulated workers heartbeating in Redis (through
// package rdb, as a gpuworker does) with the jobs' models.
type DispatcherMemory struct {
	Queued   int     `json:"queued"`
	Workers  int     `json:"workers"`
	Admitted int     `json:"admitted"`
	Seconds  float64 `json:"seconds"`
	// AtQuarter is the resident set when a quarter, half, three quarters
	// and all of the jobs were admitted (MiB): flat is the goal.
	AtQuarter []float64 `json:"at_quarter_mib"`
	RSS       RSS       `json:"rss"`
}

// AdapterMemory is the endpoint API holding Waiters /runsync requests of
// jobs that do not end while it is measured (no worker takes them).
type AdapterMemory struct {
	Waiters int `json:"waiters"`
	// Admitted is the jobs of the waiters that reached IN_QUEUE;
	// AnsweredEarly the waiters answered before the measurement ended
	// (should be none).
	Admitted      int `json:"admitted"`
	AnsweredEarly int `json:"answered_early"`
	RSS           RSS `json:"rss"`
	// PerWaiterKiB is (End − Idle) / Waiters.
	PerWaiterKiB float64 `json:"per_waiter_kib"`
}

// memoryHold is how long a loaded process is sampled once its load is in
// place, to see whether its memory stays flat.
const memoryHold = 2 * time.Second

const memoryMethod = "the measured role runs alone in a process of its own (this binary re-executed with " + ChildEnv +
	"), the rest of the stack in the bench's process; VmRSS of /proc/<pid>/status sampled every 20 ms, VmHWM at the end; " +
	"the binary links the whole comfyfleet CLI, so its idle figure is an upper bound of the role's own binary's"

func runMemory(ctx context.Context, r *runner) error {
	if r.cfg.External() {
		return skipped("the memory scenario measures processes it starts; it does not run against a running stack")
	}
	if _, err := readStatus(os.Getpid()); errors.Is(err, errNoProc) {
		return skipped("no /proc on this system: resident memory cannot be read")
	}
	res := &MemoryResult{Method: memoryMethod, NotRun: map[string]string{}}
	r.report.Memory = res
	var errs []error
	note := func(part string, err error) {
		var n noS3
		if errors.As(err, &n) {
			res.NotRun[part] = n.Error()
			return
		}
		res.NotRun[part] = "could not run: " + err.Error()
		errs = append(errs, fmt.Errorf("%s: %w", part, err))
	}
	if err := r.memoryWorker(ctx, res); err != nil {
		note("worker", err)
	}
	if err := r.memoryDispatcher(ctx, res); err != nil {
		note("dispatcher", err)
	}
	if err := r.memoryAdapter(ctx, res); err != nil {
		note("adapter", err)
	}
	if len(res.NotRun) == 0 {
		res.NotRun = nil
	}
	res.print(r.out)
	return errors.Join(errs...)
}

// childEnv is the settings a child role gets to join the stack.
func (r *runner) childEnv(st *stack, more map[string]string) map[string]string {
	env := map[string]string{"NATS_URL": st.NATSURL, "REDIS_URL": st.RedisURL, "LOG_LEVEL": "error",
		childPrefixEnv: r.cfg.KeyPrefix}
	for k, v := range more {
		env[k] = v
	}
	return env
}

// memoryWorker measures a worker streaming one OutputMB output to S3.
func (r *runner) memoryWorker(ctx context.Context, res *MemoryResult) error {
	store, err := startS3(ctx)
	if err != nil {
		return err
	}
	defer store.stop()
	dir := filepath.Join(r.dir, "memory-worker")
	s, err := r.open(ctx, "memory-worker", stackSpec{NoWorkers: true}, 1)
	if err != nil {
		return err
	}
	defer s.close()
	simURL, stopSim, err := startEmulator(filepath.Join(dir, "comfysim"), comfysim.Fault{PadOutputsTo: int64(r.cfg.OutputMB) << 20}, r.cfg.Logger)
	if err != nil {
		return err
	}
	defer stopSim()
	env := r.childEnv(s.st, store.env())
	env["COMFYUI_URL"], env["WORKER_ID"] = simURL, "bench-memory-worker"
	c, err := startChild(ctx, "worker", dir, env)
	if err != nil {
		return err
	}
	defer c.stop()
	smp, err := sample(c.Pid())
	if err != nil {
		return err
	}
	seed := randomSeed()
	jobs, err := r.batchJobs("memw", 1, &seed)
	if err != nil {
		_, _ = smp.stop()
		return err
	}
	t0 := time.Now()
	err = submitGroup(ctx, s.bus, s.w, "memory-worker", jobs)
	if err == nil {
		err = s.w.wait(ctx, s.api, "memory-worker", allEnded)
	}
	took := time.Since(t0)
	rss, serr := smp.stop()
	if err != nil {
		return fmt.Errorf("the job: %w (the worker's log: %s)", err, c.logTail())
	}
	if serr != nil {
		return serr
	}
	m := &WorkerMemory{OutputBytes: int64(r.cfg.OutputMB) << 20, Seconds: round3(took.Seconds()), RSS: rss,
		Status: string(s.w.job(jobs[0].ID).Status)}
	if _, m.StoredBytes, err = store.stored(); err != nil {
		return err
	}
	m.MiBPerSec = round3(float64(m.StoredBytes) / (1 << 20) / took.Seconds())
	res.Worker = m
	if m.Status != string(proto.StatusCompleted) {
		return fmt.Errorf("the job ended %s (the worker's log: %s)", m.Status, c.logTail())
	}
	return nil
}

// memoryDispatcher measures a dispatcher with Queued jobs admitted and
// FleetWorkers heartbeats.
func (r *runner) memoryDispatcher(ctx context.Context, res *MemoryResult) error {
	dir := filepath.Join(r.dir, "memory-dispatcher")
	s, err := r.open(ctx, "memory-dispatcher", stackSpec{NoWorkers: true, NoDispatcher: true, NoAdapter: true}, 1)
	if err != nil {
		return err
	}
	defer s.close()
	beats, err := r.simulateFleet(ctx, s.st, r.cfg.FleetWorkers)
	if err != nil {
		return err
	}
	defer beats()
	c, err := startChild(ctx, "dispatcher", dir, r.childEnv(s.st, nil))
	if err != nil {
		return err
	}
	defer c.stop()
	smp, err := sample(c.Pid())
	if err != nil {
		return err
	}
	m := &DispatcherMemory{Queued: r.cfg.Queued, Workers: r.cfg.FleetWorkers}
	res.Dispatcher = m
	// Note the resident set as each quarter is admitted.
	quarters := make(chan struct{})
	var qwg sync.WaitGroup
	qwg.Add(1)
	go func() {
		defer qwg.Done()
		next := 1
		for next <= 4 {
			t := time.NewTimer(100 * time.Millisecond)
			select {
			case <-quarters:
				t.Stop()
				return
			case <-t.C:
			}
			for next <= 4 && s.w.counts("memory-dispatcher").Seen >= r.cfg.Queued*next/4 {
				m.AtQuarter = append(m.AtQuarter, smp.now())
				next++
			}
		}
	}()
	t0 := time.Now()
	seed := randomSeed()
	err = func() error {
		const chunk = 1000
		for i := 0; i < r.cfg.Queued; i += chunk {
			jobs := make([]batchJob, 0, chunk)
			for j := i; j < min(i+chunk, r.cfg.Queued); j++ {
				bj, err := newBatchJob(fmt.Sprintf("bench-%s-memd%06d", r.runID, j), runInput(workflow(r.cfg.Size, seed)))
				if err != nil {
					return err
				}
				seed++
				jobs = append(jobs, bj)
			}
			if err := submitGroup(ctx, s.bus, s.w, "memory-dispatcher", jobs); err != nil {
				return err
			}
		}
		return s.w.wait(ctx, nil, "memory-dispatcher", func(c counts) bool { return c.Seen >= r.cfg.Queued })
	}()
	m.Seconds = round3(time.Since(t0).Seconds())
	if err != nil {
		close(quarters)
	}
	qwg.Wait()
	if err == nil {
		err = hold(ctx)
	}
	m.Admitted = s.w.counts("memory-dispatcher").Seen
	rss, serr := smp.stop()
	m.RSS = rss
	if err != nil {
		return fmt.Errorf("queue the jobs: %w (the dispatcher's log: %s)", err, c.logTail())
	}
	return serr
}

// memoryAdapter measures the endpoint API holding Waiters /runsync
// requests whose jobs stay queued.
func (r *runner) memoryAdapter(ctx context.Context, res *MemoryResult) error {
	dir := filepath.Join(r.dir, "memory-adapter")
	// The dispatcher admits the jobs without a worker to take them.
	s, err := r.open(ctx, "memory-adapter", stackSpec{NoWorkers: true, NoAdapter: true,
		Env: map[string]string{"NO_MODEL_CHECK": "true"}}, 1)
	if err != nil {
		return err
	}
	defer s.close()
	c, err := startChild(ctx, "adapter", dir, r.childEnv(s.st, map[string]string{
		"LISTEN_ADDR": "127.0.0.1:0", "RUNSYNC_WAIT": "10m", "SHUTDOWN_GRACE": "1s"}))
	if err != nil {
		return err
	}
	defer c.stop()
	api := newAPIClient("http://"+c.Addr, r.cfg.Waiters)
	defer api.close()
	smp, err := sample(c.Pid())
	if err != nil {
		return err
	}
	m := &AdapterMemory{Waiters: r.cfg.Waiters}
	res.Adapter = m
	before := s.w.queuedSeen()
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var answered atomic.Int64
	seed := randomSeed()
	for _, body := range runBodies(r.cfg.Size, r.cfg.Waiters, &seed) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := api.call(wctx, http.MethodPost, "/runsync", body)
			if wctx.Err() == nil || err == nil {
				answered.Add(1)
			}
		}()
	}
	err = waitFor(ctx, s.w, func() bool { return s.w.queuedSeen()-before >= r.cfg.Waiters })
	if err == nil {
		err = hold(ctx)
	}
	m.Admitted = s.w.queuedSeen() - before
	m.AnsweredEarly = int(answered.Load())
	rss, serr := smp.stop()
	cancel()
	wg.Wait()
	m.RSS = rss
	if m.Waiters > 0 {
		m.PerWaiterKiB = round3((rss.End - rss.Idle) * 1024 / float64(m.Waiters))
	}
	if err != nil {
		return fmt.Errorf("hold the waiters: %w (%d of %d admitted; the adapter's log: %s)", err, m.Admitted, m.Waiters, c.logTail())
	}
	return serr
}

// hold lets the loaded process run for memoryHold.
func hold(ctx context.Context) error {
	t := time.NewTimer(memoryHold)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitFor waits until cond holds, rechecking on each of the watcher's
// changes and every 100 ms.
func waitFor(ctx context.Context, w *watcher, cond func() bool) error {
	for !cond() {
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-w.changed:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		t.Stop()
	}
	return nil
}

// simulateFleet registers n idle workers of the default pool with the
// models of the bench's workflow, heartbeating through package rdb as a
// gpuworker does, until the returned func is called.
func (r *runner) simulateFleet(ctx context.Context, st *stack, n int) (stop func(), err error) {
	b, err := openBackend(ctx, st, r.cfg.KeyPrefix, r.cfg.Logger)
	if err != nil {
		return nil, err
	}
	models := fleet.WorkflowModels(workflow(r.cfg.Size, 1))
	beat := func(ctx context.Context) error {
		for i := range n {
			hb := proto.Heartbeat{ID: fmt.Sprintf("bench-sim-%04d", i+1), Pool: "default", State: proto.WorkerIdle,
				ComfyUIVersion: "0.27.0", Device: "cuda:0", Models: models}
			if err := b.DB.Beat(ctx, hb); err != nil {
				return err
			}
		}
		return nil
	}
	if err := beat(ctx); err != nil {
		b.Close()
		return nil, err
	}
	bctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(b.DB.WorkerTTL() / 3)
		defer t.Stop()
		for {
			select {
			case <-bctx.Done():
				return
			case <-t.C:
				if err := beat(bctx); err != nil && bctx.Err() == nil {
					r.cfg.Logger.Warn("simulated heartbeats", zap.Error(err))
				}
			}
		}
	}()
	return func() {
		cancel()
		<-done
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer rcancel()
		for i := range n {
			_ = b.DB.RemoveWorker(rctx, fmt.Sprintf("bench-sim-%04d", i+1))
		}
		b.Close()
	}, nil
}

// openBackend connects the bench to the stack's NATS and Redis as a role
// would.
func openBackend(ctx context.Context, st *stack, prefix string, log *zap.Logger) (*backend.Backend, error) {
	var c role.Common
	fs := flagenv.New("comfyfleet bench", "")
	c.Bind(fs)
	env := map[string]string{"NATS_URL": st.NATSURL, "REDIS_URL": st.RedisURL}
	if err := fs.Parse(nil, func(k string) string { return env[k] }); err != nil {
		return nil, err
	}
	c.KeyPrefix = prefix
	return c.Open(ctx, "comfyfleet-bench", log)
}

// startEmulator serves a ComfyUI emulator with zero-time steps and the
// fault given on a loopback port.
func startEmulator(dir string, f comfysim.Fault, log *zap.Logger) (url string, stop func(), err error) {
	sim, err := comfysim.New(comfysim.Config{Dir: dir, StepDelay: -1, Logger: log})
	if err != nil {
		return "", nil, err
	}
	sim.SetFault(f)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = sim.Close()
		return "", nil, fmt.Errorf("listen for the emulator: %w", err)
	}
	srv := &http.Server{Handler: sim.Handler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: nil}
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String(), func() { _ = srv.Close(); _ = sim.Close() }, nil
}

func (res *MemoryResult) print(w io.Writer) {
	fmt.Fprintln(w, "resident memory of the measured role's own process (MiB): idle when ready, peak sampled under the load, VmHWM, at the end;")
	fmt.Fprintln(w, "anon: its anonymous part (heap, stacks) idle → peak, the rest being the binary's pages")
	tw := newTable(w)
	fmt.Fprintln(tw, "role\tload\tidle\tpeak\tVmHWM\tend\tanon\tgoal")
	row := func(name, load string, m RSS, goal string) {
		fmt.Fprintf(tw, "%s\t%s\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f → %.1f\t%s\n", name, load, m.Idle, m.Peak, m.HWM, m.End,
			m.AnonIdle, m.AnonPeak, goal)
	}
	if m := res.Worker; m != nil {
		row("gpuworker", fmt.Sprintf("%d MiB output to S3 in %.1f s (%.0f MiB/s, %s)", m.OutputBytes>>20, m.Seconds, m.MiBPerSec, m.Status),
			m.RSS, "peak ≤ 64 MB")
	}
	if m := res.Dispatcher; m != nil {
		row("dispatcher", fmt.Sprintf("%d of %d jobs queued in %.1f s, %d workers", m.Admitted, m.Queued, m.Seconds, m.Workers),
			m.RSS, "flat, ≤ 100 MB")
	}
	if m := res.Adapter; m != nil {
		row("runpod-adapter", fmt.Sprintf("%d /runsync waiters (%d admitted, %d answered early)", m.Waiters, m.Admitted, m.AnsweredEarly),
			m.RSS, "")
	}
	tw.Flush()
	if m := res.Dispatcher; m != nil && len(m.AtQuarter) > 0 {
		fmt.Fprintf(w, "dispatcher at ¼, ½, ¾ and all of the jobs admitted: %v MiB\n", m.AtQuarter)
	}
	if m := res.Adapter; m != nil {
		fmt.Fprintf(w, "runpod-adapter: %.1f KiB per waiter (end − idle)\n", m.PerWaiterKiB)
	}
	for part, why := range res.NotRun {
		fmt.Fprintf(w, "%s: %s\n", part, why)
	}
}
