package bench

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"
)

// ThroughputResult is what the throughput scenario measured: many jobs on
// zero-time emulators, through the batch path and then through /run.
type ThroughputResult struct {
	Workers int `json:"workers"`
	Jobs    int `json:"jobs"`
	Clients int `json:"clients"`
	Size    int `json:"size"`
	// Batch is the jobs published on cf.submit.batch; Run is the jobs
	// posted to /run by Clients concurrent HTTP clients.
	Batch PathResult `json:"batch"`
	Run   PathResult `json:"run"`
	// CPUScope says whose CPU the CPU figures count.
	CPUScope string `json:"cpu_scope"`
}

// PathResult is one path's figures. Seconds runs from the first
// submission to the last job's terminal event.
type PathResult struct {
	// Sent is the jobs the fleet accepted (a PubAck, or a /run answer);
	// Refused the ones it refused. Completed and Failed count their
	// terminal states; Recovered the ends found by re-reading /status
	// because an event was missed.
	Sent      int `json:"sent"`
	Refused   int `json:"refused"`
	Completed int `json:"completed"`
	Failed    int `json:"failed"`
	Recovered int `json:"recovered"`
	// SubmitSeconds is how long submitting all took.
	SubmitSeconds float64 `json:"submit_seconds"`
	Seconds       float64 `json:"seconds"`
	// Admitted is the time from the first submission to each job's
	// IN_QUEUE event (the dispatcher admitted it), Finished to its end: a
	// max of Finished far above its p99 is a straggler, a job that waited
	// for something other than the queue ahead of it; Finished close to
	// Admitted means the jobs waited for admission, not for a worker.
	Admitted Dist `json:"admitted"`
	Finished Dist `json:"finished"`
	// Incomplete is set when the path ran out of time: the figures are of
	// the jobs that finished.
	Incomplete    bool    `json:"incomplete,omitempty"`
	JobsPerSecond float64 `json:"jobs_per_second"`
	// CPUSeconds is the process's user+system CPU over Seconds.
	CPUSeconds      float64 `json:"cpu_seconds"`
	CPUMillisPerJob float64 `json:"cpu_ms_per_job"`
}

const (
	cpuInProcess = "this process: the whole stack (dispatcher, API, workers, emulators, embedded NATS and, " +
		"unless --redis-url, Redis) and the bench's own producer and event reader"
	cpuExternal = "this bench process only (producer and event reader): the stack runs elsewhere"
)

func runThroughput(ctx context.Context, r *runner) error {
	if err := r.needs(true, true, false); err != nil {
		return err
	}
	cfg := r.cfg
	s, err := r.open(ctx, "throughput", stackSpec{Workers: cfg.Workers, StepDelay: -1}, cfg.Clients)
	if err != nil {
		return err
	}
	defer s.close()
	st, b, w, api := s.st, s.bus, s.w, s.api

	res := &ThroughputResult{Workers: cfg.Workers, Jobs: cfg.Jobs, Clients: cfg.Clients, Size: cfg.Size, CPUScope: cpuInProcess}
	if !st.InProcess {
		res.CPUScope = cpuExternal
	}
	seed := randomSeed()
	// Warm up: one job per worker, so consumers and connections exist.
	warm, err := r.batchJobs("w", cfg.Workers, &seed)
	if err != nil {
		return err
	}
	if _, err := submitAndWait(ctx, b, w, api, "warm-up", warm); err != nil {
		return fmt.Errorf("warm up: %w", err)
	}

	jobs, err := r.batchJobs("b", cfg.Jobs, &seed)
	if err != nil {
		return err
	}
	// A path that runs out of time keeps the figures of what finished.
	r.report.Throughput = res
	defer res.print(r.out)
	if res.Batch, err = submitAndWait(ctx, b, w, api, "batch", jobs); err != nil {
		return fmt.Errorf("batch path: %w", err)
	}
	bodies := runBodies(cfg.Size, cfg.Jobs, &seed)
	if res.Run, err = postAndWait(ctx, w, api, "run", bodies, cfg.Clients); err != nil {
		return fmt.Errorf("/run path: %w", err)
	}
	return nil
}

// pathClock measures one path, a group of jobs: wall time and process CPU
// from its start.
type pathClock struct {
	t0    time.Time
	cpu0  time.Duration
	w     *watcher
	group string
}

func startClock(w *watcher, group string) *pathClock {
	cpu, _ := processCPU()
	return &pathClock{t0: time.Now(), cpu0: cpu, w: w, group: group}
}

// result fills the figures of the group's jobs.
func (pc *pathClock) result(submitted time.Duration, refused int) PathResult {
	d := time.Since(pc.t0)
	cpu, _ := processCPU()
	c := pc.w.counts(pc.group)
	p := PathResult{
		Sent: c.Tracked, Refused: refused, Completed: c.Ended - c.Failed, Failed: c.Failed, Recovered: c.Recovered,
		SubmitSeconds: round3(submitted.Seconds()), Seconds: round3(d.Seconds()),
		Admitted: distOf(pc.w.after(pc.group, pc.t0, queuedAt)), Finished: distOf(pc.w.after(pc.group, pc.t0, endedAt)),
		CPUSeconds: round3((cpu - pc.cpu0).Seconds()),
	}
	if p.Sent > 0 {
		p.JobsPerSecond = round3(float64(p.Sent) / d.Seconds())
		p.CPUMillisPerJob = round3(ms(cpu-pc.cpu0) / float64(p.Sent))
	}
	return p
}

// finish waits for the group's jobs to end and returns the figures; when
// ctx ends first, the figures of the jobs that ended, marked incomplete.
func (pc *pathClock) finish(ctx context.Context, api *apiClient, submitted time.Duration, refused int) (PathResult, error) {
	err := pc.w.wait(ctx, api, pc.group, allEnded)
	p := pc.result(submitted, refused)
	p.Incomplete = err != nil
	return p, err
}

// allEnded is the wait condition "every tracked job finished".
func allEnded(c counts) bool { return c.Ended >= c.Tracked }

// submitAndWait publishes jobs on the batch path as group and waits for
// all of them to finish.
func submitAndWait(ctx context.Context, b *bus, w *watcher, api *apiClient, group string, jobs []batchJob) (PathResult, error) {
	pc := startClock(w, group)
	if err := submitGroup(ctx, b, w, group, jobs); err != nil {
		return PathResult{}, err
	}
	submitted := time.Since(pc.t0)
	return pc.finish(ctx, api, submitted, 0)
}

// submitGroup tracks the jobs as group and publishes them.
func submitGroup(ctx context.Context, b *bus, w *watcher, group string, jobs []batchJob) error {
	ids := make([]string, len(jobs))
	for i, j := range jobs {
		ids[i] = j.ID
	}
	w.track(group, ids...)
	return b.submit(ctx, jobs)
}

// postAndWait posts every body to /run from clients concurrent clients,
// as group, and waits for the jobs to finish.
func postAndWait(ctx context.Context, w *watcher, api *apiClient, group string, bodies [][]byte, clients int) (PathResult, error) {
	pc := startClock(w, group)
	next := make(chan []byte)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var refused int
	var lastErr error
	for range min(clients, len(bodies)) {
		wg.Go(func() {
			for body := range next {
				id, err := api.run(ctx, body)
				if err != nil {
					mu.Lock()
					refused, lastErr = refused+1, err
					mu.Unlock()
					continue
				}
				w.track(group, id)
			}
		})
	}
feed:
	for _, body := range bodies {
		select {
		case next <- body:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	submitted := time.Since(pc.t0)
	if ctx.Err() != nil {
		return PathResult{}, ctx.Err()
	}
	if refused == len(bodies) {
		return PathResult{}, fmt.Errorf("every /run was refused: %w", lastErr)
	}
	return pc.finish(ctx, api, submitted, refused)
}

func (res *ThroughputResult) print(w io.Writer) {
	fmt.Fprintf(w, "%d jobs per path, %d workers on zero-time emulators, %dx%d PNG, /run from %d clients\n",
		res.Jobs, res.Workers, res.Size, res.Size, res.Clients)
	tw := newTable(w)
	fmt.Fprintf(tw, "\t%6s %9s %6s %8s %8s %7s %7s %10s\n", "jobs", "completed", "failed", "submit s", "total s", "jobs/s", "CPU s", "CPU ms/job")
	for _, p := range []struct {
		name string
		r    PathResult
	}{{"batch (cf.submit.batch)", res.Batch}, {"/run", res.Run}} {
		fmt.Fprintf(tw, "%s\t%6d %9d %6d %8.2f %8.2f %7.0f %7.2f %10.2f\n", p.name, p.r.Sent, p.r.Completed, p.r.Failed,
			p.r.SubmitSeconds, p.r.Seconds, p.r.JobsPerSecond, p.r.CPUSeconds, p.r.CPUMillisPerJob)
	}
	tw.Flush()
	tw = newTable(w)
	fmt.Fprintln(tw, "time from the start to each job's"+distHeader)
	fmt.Fprintln(tw, distRow("  admission: batch", res.Batch.Admitted))
	fmt.Fprintln(tw, distRow("  end: batch", res.Batch.Finished))
	fmt.Fprintln(tw, distRow("  admission: /run", res.Run.Admitted))
	fmt.Fprintln(tw, distRow("  end: /run", res.Run.Finished))
	tw.Flush()
	if res.Batch.Incomplete || res.Run.Incomplete {
		fmt.Fprintln(w, "a path ran out of time (--timeout): its figures are of the jobs that finished")
	}
	if n := res.Batch.Recovered + res.Run.Recovered; n > 0 {
		fmt.Fprintf(w, "%d job end(s) were found by re-reading /status, their events missed: their times are late\n", n)
	}
	if res.Run.Refused > 0 {
		fmt.Fprintf(w, "/run refused %d job(s)\n", res.Run.Refused)
	}
	fmt.Fprintf(w, "CPU: %s\n", res.CPUScope)
	fmt.Fprintln(w, "goal: ≥ 1,500 jobs/s and ≤ 1.3 ms CPU per job (32 workers, 2 cores, one process)")
}
