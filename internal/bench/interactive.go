package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// InteractiveResult is what the interactive scenario measured: a backlog
// of batch jobs admitted, then interactive jobs posted to /run at a
// steady rate while the backlog runs.
type InteractiveResult struct {
	// Workers and StepDelayMS (the emulators' time per step) are 0 and
	// -1 for a running stack's, unknown to the bench.
	Workers     int     `json:"workers"`
	StepDelayMS float64 `json:"step_delay_ms"`
	Backlog     int     `json:"backlog"`
	Interactive int     `json:"interactive"`
	// Prefetch is the workers' PREFETCH (-1: a running stack's, unknown);
	// PrefetchNote says whether it is the default and how to compare.
	Prefetch     int    `json:"prefetch"`
	PrefetchNote string `json:"prefetch_note"`
	Rate         int    `json:"rate"`
	// AdmitSeconds is how long the backlog took from the first publish
	// until every job of it was admitted (had a status event).
	AdmitSeconds float64 `json:"admit_seconds"`
	// QueueWait is the interactive jobs' RunPod delayTime (from /run's
	// acceptance to a worker's pickup, whole milliseconds, read from
	// /status). Latency runs from sending /run to seeing the terminal
	// event.
	QueueWait Dist `json:"queue_wait"`
	Latency   Dist `json:"latency"`
	// SlotWait, for a stack the bench started, is from each arrival to the
	// end of the first prompt running then on any of the stack's ComfyUIs
	// (0 when one was idle), from their /history: the wait a scheduler
	// that never preempts a running job cannot beat.
	SlotWait *Dist `json:"slot_wait,omitempty"`
	// Completed and Failed count the interactive jobs' ends; Refused the
	// /run calls that were refused.
	Completed int `json:"completed"`
	Failed    int `json:"failed"`
	Refused   int `json:"refused"`
	// BacklogDoneAtStart and BacklogDoneAtEnd are the batch jobs finished
	// when the first interactive job was sent and when the last ended.
	BacklogDoneAtStart int `json:"backlog_done_at_start"`
	BacklogDoneAtEnd   int `json:"backlog_done_at_end"`
}

func runInteractive(ctx context.Context, r *runner) error {
	if err := r.needs(true, true, false); err != nil {
		return err
	}
	cfg := r.cfg
	env, prefetch, note := prefetchSetting(cfg)
	s, err := r.open(ctx, "interactive", stackSpec{Workers: cfg.InteractiveWorkers, StepDelay: cfg.StepDelay, Env: env}, 16)
	if err != nil {
		return err
	}
	defer s.close()
	st, b, w, api := s.st, s.bus, s.w, s.api

	res := &InteractiveResult{Workers: cfg.InteractiveWorkers, Backlog: cfg.Backlog, Interactive: cfg.Interactive,
		Rate: cfg.Rate, StepDelayMS: ms(max(cfg.StepDelay, 0)), Prefetch: prefetch, PrefetchNote: note}
	if !st.InProcess {
		res.Workers, res.StepDelayMS = 0, -1 // the running stack's, unknown
		res.Prefetch, res.PrefetchNote = -1, "the running stack's workers' PREFETCH, unknown to the bench"
	}
	seed := randomSeed()
	backlog, err := r.batchJobs("q", cfg.Backlog, &seed)
	if err != nil {
		return err
	}
	bodies := runBodies(cfg.Size, cfg.Interactive, &seed)

	t0 := time.Now()
	if err := submitGroup(ctx, b, w, "backlog", backlog); err != nil {
		return fmt.Errorf("queue the backlog: %w", err)
	}
	if !st.InProcess {
		// Leave the running stack as it was: cancel what is left of the
		// backlog, whatever happens below.
		defer func() { cancelAll(context.WithoutCancel(ctx), api, w.unfinished("backlog")) }()
	}
	if err := w.wait(ctx, api, "backlog", func(c counts) bool { return c.Seen >= c.Tracked }); err != nil {
		return fmt.Errorf("admit the backlog: %w", err)
	}
	res.AdmitSeconds = round3(time.Since(t0).Seconds())
	res.BacklogDoneAtStart = w.counts("backlog").Ended

	sent, refused, err := arrive(ctx, w, api, bodies, cfg.Rate)
	if err != nil {
		return err
	}
	if err := w.wait(ctx, api, "interactive", allEnded); err != nil {
		return err
	}
	res.BacklogDoneAtEnd = w.counts("backlog").Ended
	c := w.counts("interactive")
	res.Completed, res.Failed, res.Refused = c.Ended-c.Failed, c.Failed, refused

	var waits, latencies []float64
	var arrivals []time.Time
	for id, at := range sent {
		v, err := api.status(ctx, id)
		if err != nil {
			return err
		}
		waits = append(waits, float64(v.DelayTime))
		latencies = append(latencies, ms(w.job(id).Ended.Sub(at)))
		arrivals = append(arrivals, at)
	}
	res.QueueWait, res.Latency = distOf(waits), distOf(latencies)
	if st.InProcess {
		d, err := slotWaits(ctx, st.ComfyUIURLs, t0, arrivals)
		if err != nil {
			return err
		}
		res.SlotWait = &d
	}
	r.report.Interactive = res
	res.print(r.out)
	return nil
}

// arrive posts the bodies to /run, one every 1/rate seconds, each from its
// own goroutine so that a slow answer does not delay the next arrival,
// and returns when every post was answered, with the send time of each
// accepted job by id.
func arrive(ctx context.Context, w *watcher, api *apiClient, bodies [][]byte, rate int) (map[string]time.Time, int, error) {
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	var mu sync.Mutex
	sent := map[string]time.Time{}
	refused := 0
	var wg sync.WaitGroup
	for i, body := range bodies {
		if i > 0 {
			select {
			case <-tick.C:
			case <-ctx.Done():
				wg.Wait()
				return nil, 0, ctx.Err()
			}
		}
		wg.Go(func() {
			at := time.Now()
			id, err := api.run(ctx, body)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				refused++
				return
			}
			sent[id] = at
			w.track("interactive", id)
		})
	}
	wg.Wait()
	if len(sent) == 0 {
		return nil, 0, fmt.Errorf("every /run was refused")
	}
	return sent, refused, nil
}

// slotWaits reads the prompts of every ComfyUI since t0 and returns, for
// each arrival, the time until the first of them was free: 0 when one was
// idle at the arrival, else the least remaining time of the prompts
// running then.
func slotWaits(ctx context.Context, urls []string, t0 time.Time, arrivals []time.Time) (Dist, error) {
	per := make([][]promptSpan, len(urls))
	for i, u := range urls {
		spans, err := executorSpans(ctx, u, t0)
		if err != nil {
			return Dist{}, err
		}
		per[i] = spans
	}
	var out []float64
	for _, at := range arrivals {
		a := at.UnixMilli()
		best := int64(-1)
		for _, spans := range per {
			left := int64(0) // idle
			for _, s := range spans {
				if s.Start <= a && a < s.End {
					left = s.End - a
					break
				}
			}
			if best < 0 || left < best {
				best = left
			}
		}
		out = append(out, float64(max(best, 0)))
	}
	return distOf(out), nil
}

// cancelAll cancels jobs through /cancel, a few at a time.
func cancelAll(ctx context.Context, api *apiClient, ids []string) {
	next := make(chan string)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for id := range next {
				_, _ = api.call(ctx, http.MethodPost, "/cancel/"+id, nil)
			}
		})
	}
	for _, id := range ids {
		next <- id
	}
	close(next)
	wg.Wait()
}

func (res *InteractiveResult) print(w io.Writer) {
	workers := fmt.Sprintf("%d workers", res.Workers)
	if res.Workers == 0 {
		workers = "the running stack's workers"
	}
	fmt.Fprintf(w, "%d batch jobs admitted in %.2f s, then %d /run jobs at %d/s; %s, %s\n",
		res.Backlog, res.AdmitSeconds, res.Interactive, res.Rate, workers, steps(res.StepDelayMS))
	tw := newTable(w)
	fmt.Fprintln(tw, distHeader)
	fmt.Fprintln(tw, distRow("queue wait (delayTime)", res.QueueWait))
	if res.SlotWait != nil {
		fmt.Fprintln(tw, distRow("first free slot (floor)", *res.SlotWait))
	}
	fmt.Fprintln(tw, distRow("latency (/run to end)", res.Latency))
	tw.Flush()
	fmt.Fprintf(w, "interactive: %d completed, %d failed, %d refused; backlog finished: %d when the first was sent, %d when the last ended\n",
		res.Completed, res.Failed, res.Refused, res.BacklogDoneAtStart, res.BacklogDoneAtEnd)
	fmt.Fprintf(w, "PREFETCH=%d; %s\n", res.Prefetch, res.PrefetchNote)
	if res.BacklogDoneAtEnd >= res.Backlog {
		fmt.Fprintln(w, "the backlog ran out before the last interactive job ended: those jobs did not wait behind it")
	}
	fmt.Fprintln(w, "goal: queue wait p99 ≤ 50 ms behind a 10,000-job backlog")
}
