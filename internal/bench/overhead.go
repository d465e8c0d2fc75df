package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/comfyfleet/comfyfleet/internal/comfy"
)

// OverheadResult is what the overhead scenario measured: the same kind of
// job, one at a time, sent straight to ComfyUI and through the fleet,
// alternately (floor, stack, floor, stack, …), so both see the same
// machine at the same moments.
type OverheadResult struct {
	// Pairs is the number of measured pairs; Warmup pairs ran first,
	// uncounted. Size is the image's width and height.
	Pairs  int `json:"pairs"`
	Warmup int `json:"warmup"`
	Size   int `json:"size"`
	// Floor is a job sent straight to the ComfyUI emulator the stack's
	// worker uses, by a client that keeps one WebSocket open
	// (internal/comfy), with its image read through /view. Stack is a job
	// through /runsync, its image decoded from the answer's base64. Diff
	// is Stack − Floor of each pair.
	Floor Dist `json:"floor"`
	Stack Dist `json:"stack"`
	Diff  Dist `json:"diff"`
	// StackDelay and StackExecution are RunPod's delayTime and
	// executionTime of the /runsync answers (whole milliseconds).
	StackDelay     Dist `json:"stack_delay"`
	StackExecution Dist `json:"stack_execution"`
	// FloorBytes and StackBytes are the image bytes each path got per job.
	FloorBytes int `json:"floor_bytes"`
	StackBytes int `json:"stack_bytes"`
	// ItemType is the type of the answers' image items: "base64" (inline)
	// or, with the workers' outputs on S3, "s3_url" (downloaded).
	ItemType string `json:"item_type"`
	// Steps splits both paths' time by step, when the stack's NATS is
	// known (its events) and ComfyUI's history names the prompts.
	Steps *OverheadSteps `json:"steps,omitempty"`
	// S3 is the S3 variant, when asked for.
	S3 *Variant `json:"s3,omitempty"`
}

// OverheadSteps are the steps of the measured jobs, from the stack's
// status events (when the bench received them) and the prompts' start and
// end in ComfyUI's history (whole milliseconds, so each step is ±1 ms).
type OverheadSteps struct {
	// Admit runs from sending /runsync to the IN_QUEUE event (API,
	// intake stream, dispatcher); Pickup to the IN_PROGRESS event (jobs
	// stream, a worker's pull and claim); Queue to the prompt's start in
	// ComfyUI (inputs, POST /prompt); Prompt to its end; Finish to the
	// terminal event (history, /view, the blob upload, the status write);
	// Answer to the answer read (the API reads the record and the blob,
	// base64, HTTP).
	Admit  Dist `json:"admit"`
	Pickup Dist `json:"pickup"`
	Queue  Dist `json:"queue"`
	Prompt Dist `json:"prompt"`
	Finish Dist `json:"finish"`
	Answer Dist `json:"answer"`
	// FloorPrompt is the floor prompts' run in ComfyUI; FloorClient the
	// rest of the floor's time (POST /prompt, WebSocket, /history, /view).
	FloorPrompt Dist `json:"floor_prompt"`
	FloorClient Dist `json:"floor_client"`
}

// timedJob is one measured job of a path: its seed, the stack's job id,
// when the bench sent it and had its images, how many bytes they had,
// and the stack's delayTime and executionTime (ms).
type timedJob struct {
	seed        uint64
	id          string
	t0, t1      time.Time
	bytes       int
	delay, exec int64
	itemType    string
}

func (j timedJob) took() time.Duration { return j.t1.Sub(j.t0) }

// Variant is a variant of overhead: whether it ran, what it ran on or
// why not, and its figures.
type Variant struct {
	Run    bool            `json:"run"`
	Note   string          `json:"note"`
	Result *OverheadResult `json:"result,omitempty"`
}

// overheadWarmup pairs run before the measured ones: the first jobs
// create consumers, connections and caches.
const overheadWarmup = 5

func runOverhead(ctx context.Context, r *runner) error {
	if err := r.needs(true, false, true); err != nil {
		return err
	}
	res, st, err := r.overhead(ctx, "overhead", nil)
	if err != nil {
		return err
	}
	r.report.Overhead = res
	res.print(r.out, st)
	if !r.cfg.S3 {
		return nil
	}
	res.S3 = &Variant{}
	if r.cfg.External() {
		res.S3.Note = "not run: against a running stack, whose workers' store is its own"
		fmt.Fprintf(r.out, "\nwith S3: %s\n", res.S3.Note)
		return nil
	}
	store, err := startS3(ctx)
	var n noS3
	switch {
	case errors.As(err, &n):
		res.S3.Note = n.Error()
		fmt.Fprintf(r.out, "\nwith S3: %s\n", res.S3.Note)
		return nil
	case err != nil:
		return fmt.Errorf("with S3: %w", err)
	}
	defer store.stop()
	s3res, st, err := r.overhead(ctx, "overhead-s3", store.env())
	if err != nil {
		return fmt.Errorf("with S3: %w", err)
	}
	res.S3 = &Variant{Run: true, Note: "the workers upload to a versitygw the bench started (" + store.srv.Endpoint +
		"); /runsync answers s3_url items, which the bench downloads", Result: s3res}
	fmt.Fprintf(r.out, "\nwith S3: %s\n", res.S3.Note)
	s3res.print(r.out, st)
	return nil
}

// overhead runs the interleaved pairs on a stack of its own whose roles
// get env (BUCKET_* for the S3 variant).
func (r *runner) overhead(ctx context.Context, name string, env map[string]string) (*OverheadResult, *stack, error) {
	s, err := r.open(ctx, name, stackSpec{Workers: 1, StepDelay: -1, Env: env}, 2)
	if err != nil {
		return nil, nil, err
	}
	defer s.close()
	st, api, w := s.st, s.api, s.w // w is nil without the stack's NATS: no steps then
	if len(st.ComfyUIURLs) == 0 {
		return nil, nil, fmt.Errorf("the stack names no ComfyUI for the floor")
	}
	cc, err := comfy.New(comfy.Config{BaseURL: st.ComfyUIURLs[0]})
	if err != nil {
		return nil, nil, err
	}
	if err := cc.Start(ctx); err != nil {
		return nil, nil, fmt.Errorf("connect to ComfyUI for the floor: %w", err)
	}
	defer cc.Close()

	cfg := r.cfg
	var since time.Time
	var floor, stack []timedJob
	seed := randomSeed()
	for i := -overheadWarmup; i < cfg.Pairs; i++ {
		if i == 0 {
			since = time.Now()
		}
		f, err := floorJob(ctx, cc, cfg.Size, seed)
		if err != nil {
			return nil, nil, fmt.Errorf("floor job %d: %w", i+overheadWarmup+1, err)
		}
		sj, err := stackJob(ctx, api, cfg.Size, seed+1)
		if err != nil {
			return nil, nil, fmt.Errorf("stack job %d: %w", i+overheadWarmup+1, err)
		}
		seed += 2
		if i >= 0 {
			floor, stack = append(floor, f), append(stack, sj)
		}
	}

	res := &OverheadResult{Pairs: cfg.Pairs, Warmup: overheadWarmup, Size: cfg.Size}
	var fd, sd, diff, delay, exec []float64
	for i := range floor {
		ft, st := floor[i].took(), stack[i].took()
		fd, sd, diff = append(fd, ms(ft)), append(sd, ms(st)), append(diff, ms(st-ft))
		delay, exec = append(delay, float64(stack[i].delay)), append(exec, float64(stack[i].exec))
		res.FloorBytes += floor[i].bytes
		res.StackBytes += stack[i].bytes
		res.ItemType = stack[i].itemType
	}
	res.Floor, res.Stack, res.Diff = distOf(fd), distOf(sd), distOf(diff)
	res.StackDelay, res.StackExecution = distOf(delay), distOf(exec)
	if n := len(floor); n > 0 {
		res.FloorBytes, res.StackBytes = res.FloorBytes/n, res.StackBytes/n
	}
	if w != nil && len(stack) > 0 && eventsArrived(ctx, w, stack) {
		if res.Steps, err = overheadSteps(ctx, st.ComfyUIURLs[0], since, w, floor, stack); err != nil {
			return nil, nil, err
		}
	}
	return res, st, nil
}

// floorJob runs one prompt on ComfyUI directly and reads its images
// through /view, as a client of ComfyUI does.
func floorJob(ctx context.Context, cc *comfy.Client, size int, seed uint64) (timedJob, error) {
	wf := workflow(size, seed)
	j := timedJob{seed: seed, t0: time.Now()}
	res, err := cc.Run(ctx, wf, comfy.RunOptions{})
	if err != nil {
		return j, err
	}
	for _, f := range res.Files() {
		body, err := cc.View(ctx, f.FileRef)
		if err != nil {
			return j, err
		}
		data, err := io.ReadAll(body)
		body.Close()
		if err != nil {
			return j, fmt.Errorf("view %s: %w", f.Filename, err)
		}
		j.bytes += len(data)
	}
	j.t1 = time.Now()
	if j.bytes == 0 {
		return j, fmt.Errorf("prompt made no image")
	}
	return j, nil
}

// stackJob runs one job through /runsync and decodes its images, as a
// RunPod client does.
func stackJob(ctx context.Context, api *apiClient, size int, seed uint64) (timedJob, error) {
	body := runBody(workflow(size, seed))
	j := timedJob{seed: seed, t0: time.Now()}
	v, err := api.runSync(ctx, body)
	if err != nil {
		return j, err
	}
	j.bytes, err = api.imageBytes(ctx, v)
	if v.Output != nil && len(v.Output.Images) > 0 {
		j.itemType = v.Output.Images[0].Type
	}
	j.t1 = time.Now()
	j.id, j.delay, j.exec = v.ID, v.DelayTime, v.ExecutionTime
	return j, err
}

// eventsArrived waits a little for the terminal events of the jobs, which
// may come after their answers.
func eventsArrived(ctx context.Context, w *watcher, jobs []timedJob) bool {
	ids := make([]string, len(jobs))
	for i, j := range jobs {
		ids[i] = j.id
	}
	w.track("stack", ids...)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return w.wait(ctx, nil, "stack", allEnded) == nil
}

// overheadSteps splits the measured jobs' time by step; nil when a job's
// prompt or events are missing.
func overheadSteps(ctx context.Context, comfyURL string, since time.Time, w *watcher, floorJobs, stackJobs []timedJob) (*OverheadSteps, error) {
	spans, err := executorSpans(ctx, comfyURL, since)
	if err != nil {
		return nil, err
	}
	bySeed := map[string]promptSpan{}
	for _, s := range spans {
		bySeed[s.Seed] = s
	}
	prompt := func(j timedJob) (start, end time.Time, ok bool) {
		s, ok := bySeed[strconv.FormatUint(j.seed, 10)]
		return time.UnixMilli(s.Start), time.UnixMilli(s.End), ok
	}
	var fp, fc []float64
	for _, j := range floorJobs {
		start, end, ok := prompt(j)
		if !ok {
			return nil, nil
		}
		fp, fc = append(fp, ms(end.Sub(start))), append(fc, ms(j.took()-end.Sub(start)))
	}
	var admit, pickup, queue, run, finish, answer []float64
	for _, j := range stackJobs {
		start, end, ok := prompt(j)
		ev := w.job(j.id)
		if !ok || ev.Queued.IsZero() || ev.Started.IsZero() || ev.Ended.IsZero() {
			return nil, nil
		}
		admit, pickup = append(admit, ms(ev.Queued.Sub(j.t0))), append(pickup, ms(ev.Started.Sub(ev.Queued)))
		queue, run = append(queue, ms(start.Sub(ev.Started))), append(run, ms(end.Sub(start)))
		finish, answer = append(finish, ms(ev.Ended.Sub(end))), append(answer, ms(j.t1.Sub(ev.Ended)))
	}
	return &OverheadSteps{Admit: distOf(admit), Pickup: distOf(pickup), Queue: distOf(queue), Prompt: distOf(run),
		Finish: distOf(finish), Answer: distOf(answer), FloorPrompt: distOf(fp), FloorClient: distOf(fc)}, nil
}

func (res *OverheadResult) print(w io.Writer, st *stack) {
	where := "1 worker, its emulator's steps take no time"
	if !st.InProcess {
		where = "the running stack, the floor on " + st.ComfyUIURLs[0]
	}
	fmt.Fprintf(w, "%d pairs after %d warm-up pairs, %dx%d PNG, %s\n", res.Pairs, res.Warmup, res.Size, res.Size, where)
	tw := newTable(w)
	fmt.Fprintln(tw, distHeader)
	fmt.Fprintln(tw, distRow("floor (ComfyUI direct)", res.Floor))
	fmt.Fprintln(tw, distRow("stack (/runsync)", res.Stack))
	fmt.Fprintln(tw, distRow("difference per pair", res.Diff))
	fmt.Fprintln(tw, distRow("stack delayTime", res.StackDelay))
	fmt.Fprintln(tw, distRow("stack executionTime", res.StackExecution))
	if s := res.Steps; s != nil {
		fmt.Fprintln(tw, "by step (events and ComfyUI's ms timestamps)\t")
		fmt.Fprintln(tw, distRow("  floor: prompt in ComfyUI", s.FloorPrompt))
		fmt.Fprintln(tw, distRow("  floor: the client's rest", s.FloorClient))
		fmt.Fprintln(tw, distRow("  stack: sent → IN_QUEUE", s.Admit))
		fmt.Fprintln(tw, distRow("  stack: IN_QUEUE → IN_PROGRESS", s.Pickup))
		fmt.Fprintln(tw, distRow("  stack: IN_PROGRESS → prompt", s.Queue))
		fmt.Fprintln(tw, distRow("  stack: prompt in ComfyUI", s.Prompt))
		fmt.Fprintln(tw, distRow("  stack: prompt end → end event", s.Finish))
		fmt.Fprintln(tw, distRow("  stack: end event → answer", s.Answer))
	}
	tw.Flush()
	fmt.Fprintf(w, "image bytes per job: floor %d, stack %d (%s)\n", res.FloorBytes, res.StackBytes, res.ItemType)
	fmt.Fprintln(w, "goal: difference p50 ≤ 2 ms, p99 ≤ 5 ms")
}
