package bench

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/comfyfleet/comfyfleet/internal/worker"
)

// IdleGapResult is what the idle-gap scenario measured: one worker, a
// queue holding every job from the start, and the time its ComfyUI's
// executor sat idle between one prompt's end and the next one's start.
type IdleGapResult struct {
	Jobs int `json:"jobs"`
	// StepDelayMS is the emulator's time per step, the jobs have 20; -1
	// for a running stack's, unknown to the bench.
	StepDelayMS float64 `json:"step_delay_ms"`
	// Prefetch is the worker's PREFETCH (-1: a running stack's, unknown);
	// PrefetchNote says whether it is the default and how to compare.
	Prefetch     int    `json:"prefetch"`
	PrefetchNote string `json:"prefetch_note"`
	// Prompts is the prompts found in ComfyUI's history; JobLength their
	// execution time and Gap the idle time before each but the first,
	// from the history's timestamps.
	Prompts   int  `json:"prompts"`
	JobLength Dist `json:"job_length"`
	Gap       Dist `json:"gap"`
	// Finish, Take and Start split each gap by the worker's status events
	// (as the bench received them): from the prompt's end in ComfyUI to
	// the job's terminal event (outputs stored, status written), from
	// there to the next job's IN_PROGRESS event (ack, fetch, claim), and
	// from there to the next prompt's start in ComfyUI (inputs, queueing
	// the prompt). Missing when the prompts and jobs do not pair up.
	Finish *Dist `json:"finish,omitempty"`
	Take   *Dist `json:"take,omitempty"`
	Start  *Dist `json:"start,omitempty"`
	// ResolutionMS is the timestamps' resolution.
	ResolutionMS float64 `json:"resolution_ms"`
	// MakespanSeconds runs from the first prompt's start to the last
	// one's end; BusyShare is the executor's busy time over it.
	MakespanSeconds float64 `json:"makespan_seconds"`
	BusyShare       float64 `json:"busy_share"`
}

// prefetchSetting is the PREFETCH of a scenario's workers and what to
// say about it: the setting to pass (nil: the default) and its value.
func prefetchSetting(cfg Config) (env map[string]string, prefetch int, note string) {
	if cfg.Prefetch < 0 {
		return nil, worker.DefaultPrefetch, "the worker's default; --prefetch 0 (none, the default before) to compare"
	}
	return map[string]string{"PREFETCH": strconv.Itoa(cfg.Prefetch)}, cfg.Prefetch,
		fmt.Sprintf("set by --prefetch; the worker's default is %d", worker.DefaultPrefetch)
}

func runIdleGap(ctx context.Context, r *runner) error {
	if err := r.needs(false, true, true); err != nil {
		return err
	}
	cfg := r.cfg
	env, prefetch, note := prefetchSetting(cfg)
	s, err := r.open(ctx, "idle-gap", stackSpec{Workers: 1, StepDelay: cfg.StepDelay, Env: env}, 2)
	if err != nil {
		return err
	}
	defer s.close()
	st, b, w, api := s.st, s.bus, s.w, s.api // api is nil without one: no re-reads of missed events
	if len(st.ComfyUIURLs) == 0 {
		return fmt.Errorf("the stack names no ComfyUI to read the history of")
	}

	seed := randomSeed()
	warm, err := r.batchJobs("gw", 1, &seed)
	if err != nil {
		return err
	}
	if _, err := submitAndWait(ctx, b, w, api, "warm-up", warm); err != nil {
		return fmt.Errorf("warm up: %w", err)
	}
	since := time.Now()
	jobs, err := r.batchJobs("g", cfg.GapJobs, &seed)
	if err != nil {
		return err
	}
	if _, err := submitAndWait(ctx, b, w, api, "queued", jobs); err != nil {
		return err
	}
	spans, err := executorSpans(ctx, st.ComfyUIURLs[0], since)
	if err != nil {
		return err
	}

	res := &IdleGapResult{Jobs: cfg.GapJobs, StepDelayMS: ms(max(cfg.StepDelay, 0)), Prefetch: prefetch, PrefetchNote: note,
		Prompts: len(spans), ResolutionMS: 1}
	var lengths, gaps []float64
	var busy int64
	for i, s := range spans {
		lengths = append(lengths, float64(s.End-s.Start))
		busy += s.End - s.Start
		if i > 0 {
			gaps = append(gaps, float64(s.Start-spans[i-1].End))
		}
	}
	res.JobLength, res.Gap = distOf(lengths), distOf(gaps)
	res.Finish, res.Take, res.Start = gapParts(spans, w.inOrder("queued"))
	if n := len(spans); n > 0 {
		makespan := spans[n-1].End - spans[0].Start
		res.MakespanSeconds = round3(float64(makespan) / 1000)
		if makespan > 0 {
			res.BusyShare = round3(float64(busy) / float64(makespan))
		}
	}
	if !st.InProcess {
		res.Prefetch, res.PrefetchNote = -1, "the running stack's worker's PREFETCH, unknown to the bench"
		res.StepDelayMS = -1
	}
	r.report.IdleGap = res
	res.print(r.out)
	return nil
}

// gapParts splits the gaps between prompts by the jobs' events: the one
// worker ran the jobs one after the other, so the n-th prompt to start is
// the n-th job to start.
func gapParts(spans []promptSpan, jobs []jobTrack) (finish, take, start *Dist) {
	if len(spans) != len(jobs) || len(spans) < 2 {
		return nil, nil, nil
	}
	var f, t, s []float64
	for i := 1; i < len(spans); i++ {
		prev, next := jobs[i-1], jobs[i]
		if prev.Ended.IsZero() || next.Started.IsZero() {
			return nil, nil, nil
		}
		f = append(f, ms(prev.Ended.Sub(time.UnixMilli(spans[i-1].End))))
		t = append(t, ms(next.Started.Sub(prev.Ended)))
		s = append(s, ms(time.UnixMilli(spans[i].Start).Sub(next.Started)))
	}
	df, dt, ds := distOf(f), distOf(t), distOf(s)
	return &df, &dt, &ds
}

func (res *IdleGapResult) print(w io.Writer) {
	fmt.Fprintf(w, "%d queued jobs on one worker, %s; executor timestamps from ComfyUI's /history (%.0f ms resolution)\n",
		res.Jobs, steps(res.StepDelayMS), res.ResolutionMS)
	tw := newTable(w)
	fmt.Fprintln(tw, distHeader)
	fmt.Fprintln(tw, distRow("job length", res.JobLength))
	fmt.Fprintln(tw, distRow("idle gap", res.Gap))
	if res.Finish != nil {
		fmt.Fprintln(tw, distRow("  prompt end → job's end event", *res.Finish))
		fmt.Fprintln(tw, distRow("  end event → next IN_PROGRESS", *res.Take))
		fmt.Fprintln(tw, distRow("  IN_PROGRESS → prompt start", *res.Start))
	}
	tw.Flush()
	fmt.Fprintf(w, "prompts in history: %d, makespan %.2f s, executor busy %.1f%%\n", res.Prompts, res.MakespanSeconds, 100*res.BusyShare)
	fmt.Fprintf(w, "PREFETCH=%d; %s\n", res.Prefetch, res.PrefetchNote)
	fmt.Fprintln(w, "goal: idle gap ≤ 1 ms median with the default settings")
}
