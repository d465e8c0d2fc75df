package bench

import (
	"context"
	"fmt"
	"io"
	"sort"
	"time"
)

// TenantsResult is what the tenants scenario measured: tenant A queues a
// big backlog of batch jobs, then tenant B sends jobs one at a time at a
// steady rate on the same lane, once with fair share on (the default) and
// once with it off (LANE_AHEAD=0, one FIFO).
type TenantsResult struct {
	Workers     int     `json:"workers"`
	StepDelayMS float64 `json:"step_delay_ms"`
	// Backlog is tenant A's jobs, queued first; Jobs tenant B's, sent
	// Rate a second once the backlog is admitted.
	Backlog int `json:"backlog"`
	Jobs    int `json:"jobs"`
	Rate    int `json:"rate"`
	// Prefetch is the workers' PREFETCH (the worker's default): each
	// worker holds one job beyond the running one, which a new job waits
	// behind too.
	Prefetch int        `json:"prefetch"`
	On       TenantsRun `json:"fair_share"`
	Off      TenantsRun `json:"fifo"`
}

// TenantsRun is one run of the tenants scenario.
type TenantsRun struct {
	// Setting says how fair share was set.
	Setting string `json:"setting"`
	// JobMS is the median run time of a prompt (from the emulators'
	// /history), the unit the wait compares to.
	JobMS float64 `json:"job_ms"`
	// Wait is tenant B's jobs' wait, from its publish to its IN_PROGRESS
	// event; WaitJobs is its p50 and p99 in job lengths.
	Wait     Dist       `json:"wait"`
	WaitJobs [2]float64 `json:"wait_in_jobs"`
	// BacklogDone is tenant A's jobs that had ended when B's last job
	// started.
	BacklogDone int `json:"backlog_done"`
}

// Tenant names of the scenario's two producers.
const (
	tenantBig   = "tenant-a"
	tenantSmall = "tenant-b"
)

func runTenants(ctx context.Context, r *runner) error {
	if r.cfg.External() {
		return skipped("runs the fleet with fair share on and off (LANE_AHEAD), which it sets on a stack it starts itself")
	}
	cfg := r.cfg
	res := &TenantsResult{Workers: cfg.TenantWorkers, StepDelayMS: ms(max(cfg.StepDelay, 0)),
		Backlog: cfg.TenantBacklog, Jobs: cfg.TenantJobs, Rate: cfg.TenantRate, Prefetch: 1}
	r.report.Tenants = res
	for _, v := range []struct {
		name, tag, setting string
		env                map[string]string
		out                *TenantsRun
	}{
		{"fair", "s", "LANE_AHEAD=-1 (the default: as many jobs ahead as the pool has workers), equal weights", nil, &res.On},
		{"fifo", "f", "LANE_AHEAD=0: fair share off, one FIFO per lane", map[string]string{"LANE_AHEAD": "0"}, &res.Off},
	} {
		run, err := r.tenantsRun(ctx, v.name, v.tag, v.env)
		run.Setting = v.setting
		*v.out = run
		if err != nil {
			return fmt.Errorf("%s run: %w", v.name, err)
		}
	}
	res.print(r.out)
	return nil
}

// tenantsRun queues tenant A's backlog on a stack of its own, then sends
// tenant B's jobs at the rate, and measures B's waits until the last of
// them started. What is left of the backlog stops with the stack. The
// jobs' ids carry tag, so that the two runs' ids differ (on a shared
// Redis, the second run's jobs would be the first's, finished).
func (r *runner) tenantsRun(ctx context.Context, name, tag string, env map[string]string) (TenantsRun, error) {
	cfg := r.cfg
	var run TenantsRun
	s, err := r.open(ctx, "tenants-"+name, stackSpec{Workers: cfg.TenantWorkers, StepDelay: cfg.StepDelay, Env: env}, 4)
	if err != nil {
		return run, err
	}
	defer s.close()
	b, w := s.bus, s.w
	seed := randomSeed()
	backlog, err := r.batchJobs(tag+"a", cfg.TenantBacklog, &seed)
	if err != nil {
		return run, err
	}
	small, err := r.batchJobs(tag+"b", cfg.TenantJobs, &seed)
	if err != nil {
		return run, err
	}
	t0 := time.Now()
	w.track("backlog", idsOf(backlog)...)
	if err := b.submitAs(ctx, tenantBig, backlog); err != nil {
		return run, fmt.Errorf("queue tenant A's backlog: %w", err)
	}
	if err := w.wait(ctx, s.api, "backlog", func(c counts) bool { return c.Seen >= c.Tracked }); err != nil {
		return run, fmt.Errorf("admit tenant A's backlog: %w", err)
	}

	// Tenant B: one job every 1/rate s, each publish timed.
	sent := make(map[string]time.Time, len(small))
	tick := time.NewTicker(time.Second / time.Duration(cfg.TenantRate))
	defer tick.Stop()
	for i, j := range small {
		if i > 0 {
			select {
			case <-tick.C:
			case <-ctx.Done():
				return run, ctx.Err()
			}
		}
		w.track("small", j.ID)
		sent[j.ID] = time.Now()
		if err := b.submitAs(ctx, tenantSmall, small[i:i+1]); err != nil {
			return run, fmt.Errorf("send tenant B's job: %w", err)
		}
	}
	if err := w.waitStarted(ctx, "small", len(small)); err != nil {
		return run, fmt.Errorf("tenant B's jobs: %w", err)
	}
	run.BacklogDone = w.counts("backlog").Ended

	var waits []float64
	for id, at := range sent {
		if t := w.job(id); !t.Started.IsZero() {
			waits = append(waits, ms(t.Started.Sub(at)))
		}
	}
	// A job's length is its prompt's, by the emulators' executors: the
	// time from IN_PROGRESS to its end also holds a prefetched job's wait
	// in ComfyUI's queue.
	var lengths []float64
	for _, u := range s.st.ComfyUIURLs {
		spans, err := executorSpans(ctx, u, t0)
		if err != nil {
			return run, err
		}
		for _, sp := range spans {
			lengths = append(lengths, float64(sp.End-sp.Start))
		}
	}
	run.Wait = distOf(waits)
	if len(lengths) > 0 {
		sort.Float64s(lengths)
		run.JobMS = round3(lengths[len(lengths)/2])
	}
	if run.JobMS > 0 {
		run.WaitJobs = [2]float64{round3(run.Wait.P50 / run.JobMS), round3(run.Wait.P99 / run.JobMS)}
	}
	return run, nil
}

func idsOf(jobs []batchJob) []string {
	ids := make([]string, len(jobs))
	for i, j := range jobs {
		ids[i] = j.ID
	}
	return ids
}

func (res *TenantsResult) print(w io.Writer) {
	fmt.Fprintf(w, "tenant A queues %d batch jobs, then tenant B sends %d, %d/s, on the same lane; %d workers, %s, PREFETCH=%d\n",
		res.Backlog, res.Jobs, res.Rate, res.Workers, steps(res.StepDelayMS), res.Prefetch)
	tw := newTable(w)
	fmt.Fprintln(tw, "tenant B's wait (publish to IN_PROGRESS)"+distHeader+"\tjob ms\tp50, p99 in jobs\tA's jobs done")
	for _, run := range []TenantsRun{res.On, res.Off} {
		fmt.Fprintf(tw, "%s\t%.1f\t%.2f, %.2f\t%d\n", distRow(run.Setting, run.Wait), run.JobMS, run.WaitJobs[0], run.WaitJobs[1], run.BacklogDone)
	}
	tw.Flush()
	fmt.Fprintln(w, "goal: with fair share, B's new job waits about one job length (its turn, the jobs a lane keeps ahead, each worker's prefetched job), whatever A's backlog")
}
