package bench

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// MixedResult is what the mixed-models scenario measured: workers whose
// ComfyUI holds one checkpoint in VRAM at a time and pays a load time for
// another, jobs over several checkpoints in a seeded random order, run
// once with the fleet's model-aware routing and once model-blind, beside
// the loads and makespan of an offline schedule (the oracle).
type MixedResult struct {
	Workers int   `json:"workers"`
	Jobs    int   `json:"jobs"`
	Models  int   `json:"models"`
	Seed    int64 `json:"seed"`
	// JobsPerModel counts the jobs of each checkpoint.
	JobsPerModel []int `json:"jobs_per_model"`
	// LoadDelayMS is the emulators' model load time; JobMS a job's
	// nominal length (20 sampler steps of StepDelayMS), the oracle's.
	LoadDelayMS float64 `json:"load_delay_ms"`
	StepDelayMS float64 `json:"step_delay_ms"`
	JobMS       float64 `json:"job_ms"`

	Aware  MixedRun    `json:"aware"`
	Blind  MixedRun    `json:"blind"`
	Oracle MixedOracle `json:"oracle"`
	// AwareRatio and BlindRatio are each run's loads over the oracle's.
	AwareRatio float64 `json:"aware_ratio"`
	BlindRatio float64 `json:"blind_ratio"`
	// ByURL is the same jobs with their checkpoints named by URL
	// (--by-url), nil without.
	ByURL *MixedByURL `json:"by_url,omitempty"`
}

// MixedByURL is mixed-models again with the jobs naming their
// checkpoints by URL on a loopback file server, each worker fetching them
// into its own model cache (its emulator's models folder): the downloads
// model-aware routing saves beside the loads.
type MixedByURL struct {
	// FileBytes is the size of each served checkpoint.
	FileBytes int         `json:"file_bytes"`
	Aware     MixedURLRun `json:"aware"`
	Blind     MixedURLRun `json:"blind"`
	// OracleDownloads is the grouped schedule's downloads, one per
	// worker of a model, as its loads (Oracle.Loads);
	// MinDownloads is one per checkpoint that has jobs.
	OracleDownloads int `json:"oracle_downloads"`
	MinDownloads    int `json:"min_downloads"`
}

// MixedURLRun is one run by URL: the run's figures and the downloads.
// Its ReplayedLoads may differ from Loads: a job waiting for a download
// has started (IN_PROGRESS) but its prompt is queued in ComfyUI after
// those of the jobs taken after it whose files were there.
type MixedURLRun struct {
	MixedRun
	// Downloads is the full downloads the file server answered, GETs
	// every GET (a resumed or cut download counts in GETs only).
	Downloads int `json:"downloads"`
	GETs      int `json:"gets"`
	// CachedPerWorker counts the checkpoints in each worker's cache
	// at the end, by worker; they sum to Downloads when no download was
	// repeated.
	CachedPerWorker []int `json:"cached_per_worker"`
	CachedFiles     int   `json:"cached_files"`
}

// MixedRun is one run of the jobs on a stack of its own.
type MixedRun struct {
	// Setting is the routing setting of the run.
	Setting string `json:"setting"`
	// Loads is the model loads counted by the emulators (their
	// /control/stats model_loads), LoadsPerWorker by emulator.
	Loads          int64   `json:"loads"`
	LoadsPerWorker []int64 `json:"loads_per_worker"`
	// ReplayedLoads is the loads the jobs' placement implies: by worker,
	// in the order their IN_PROGRESS events came, one per change of
	// checkpoint. It equals Loads when each job ran once.
	ReplayedLoads int `json:"replayed_loads"`
	// JobsPerWorker counts the jobs each worker ran, by its IN_PROGRESS
	// event, most first.
	JobsPerWorker []int `json:"jobs_per_worker"`
	Completed     int   `json:"completed"`
	Failed        int   `json:"failed"`
	// MakespanSeconds runs from the first submission to the last job's
	// terminal event; LoadSeconds is Loads × the load delay, summed over
	// the workers.
	MakespanSeconds float64 `json:"makespan_seconds"`
	LoadSeconds     float64 `json:"load_seconds"`
	Incomplete      bool    `json:"incomplete,omitempty"`
}

// MixedOracle is the offline bound the runs are held against.
type MixedOracle struct {
	// MinLoads is the fewest loads of any schedule: every checkpoint
	// that has jobs is loaded at least once.
	MinLoads int `json:"min_loads"`
	// Loads, WorkersPerModel and MakespanSeconds are those of the
	// grouped schedule (mixedOracle): each worker holds one checkpoint
	// for the whole run and loads it once.
	Loads           int     `json:"loads"`
	WorkersPerModel []int   `json:"workers_per_model"`
	MakespanSeconds float64 `json:"makespan_seconds"`
	// MakespanBoundSeconds is below the makespan of any schedule: the
	// work and the fewest loads spread evenly over the workers, and at
	// least one load and one job.
	MakespanBoundSeconds float64 `json:"makespan_bound_seconds"`
}

// blindSetting turns the workers' warm preference off.
const blindSetting = "WARM_DEFER=-1ms"

func runMixed(ctx context.Context, r *runner) error {
	if r.cfg.External() {
		return skipped("counts the model loads of the emulators of a stack it starts itself; a running stack's ComfyUI does not report them")
	}
	cfg := r.cfg
	ckpts := make([]string, cfg.Models)
	for i := range ckpts {
		ckpts[i] = fmt.Sprintf("mixed-%d.safetensors", i+1)
	}
	rng := rand.New(rand.NewPCG(uint64(cfg.MixedSeed), 0))
	order := make([]int, cfg.MixedJobs)
	perModel := make([]int, cfg.Models)
	for i := range order {
		order[i] = rng.IntN(cfg.Models)
		perModel[order[i]]++
	}
	load := max(cfg.LoadDelay, 0)
	job := workflowSteps * max(cfg.StepDelay, 0)
	res := &MixedResult{Workers: cfg.MixedWorkers, Jobs: cfg.MixedJobs, Models: cfg.Models, Seed: cfg.MixedSeed,
		JobsPerModel: perModel, LoadDelayMS: ms(load), StepDelayMS: ms(max(cfg.StepDelay, 0)), JobMS: ms(job)}
	res.Oracle = mixedOracle(perModel, cfg.MixedWorkers, job, load)

	for _, v := range []struct {
		name, setting string
		env           map[string]string
		out           *MixedRun
	}{
		{"aware", "WARM_DEFER=25ms, the default", nil, &res.Aware},
		{"blind", blindSetting, map[string]string{"WARM_DEFER": "-1ms"}, &res.Blind},
	} {
		run, err := r.mixedRun(ctx, v.name, v.name[:1], v.env, ckpts, order)
		run.Setting = v.setting
		*v.out = run
		if err != nil {
			r.report.Mixed = res
			return fmt.Errorf("%s run: %w", v.name, err)
		}
	}
	if res.Oracle.Loads > 0 {
		res.AwareRatio = round3(float64(res.Aware.Loads) / float64(res.Oracle.Loads))
		res.BlindRatio = round3(float64(res.Blind.Loads) / float64(res.Oracle.Loads))
	}
	r.report.Mixed = res
	if cfg.ByURL {
		if err := r.mixedByURL(ctx, res, ckpts, order); err != nil {
			return err
		}
	}
	res.print(r.out)
	return nil
}

// mixedByURL runs the jobs again, model-aware and model-blind, with
// their checkpoints named by URL, into res.ByURL.
func (r *runner) mixedByURL(ctx context.Context, res *MixedResult, ckpts []string, order []int) error {
	srv, err := startModelServer(ckpts)
	if err != nil {
		return err
	}
	defer srv.close()
	urls := make([]string, len(ckpts))
	for i, c := range ckpts {
		urls[i] = srv.url(c)
	}
	u := &MixedByURL{FileBytes: modelFileSize, OracleDownloads: res.Oracle.Loads, MinDownloads: res.Oracle.MinLoads}
	res.ByURL = u
	allow := map[string]string{"MODEL_URL_ALLOW": srv.hostport(), "MODEL_URL_ALLOW_HTTP": "true"}
	for _, v := range []struct {
		name, tag, setting string
		env                map[string]string
		out                *MixedURLRun
	}{
		{"aware-url", "ua", res.Aware.Setting, nil, &u.Aware},
		{"blind-url", "ub", blindSetting, map[string]string{"WARM_DEFER": "-1ms"}, &u.Blind},
	} {
		env := maps.Clone(allow)
		maps.Copy(env, v.env)
		run, err := r.mixedRun(ctx, v.name, v.tag, env, urls, order)
		run.Setting = v.setting
		gets, full := srv.counts()
		out := MixedURLRun{MixedRun: run, Downloads: full, GETs: gets}
		out.CachedPerWorker, out.CachedFiles = cachedCheckpoints(filepath.Join(r.dir, "mixed-models-"+v.name))
		*v.out = out
		if err != nil {
			return fmt.Errorf("%s run: %w", v.name, err)
		}
	}
	return nil
}

// cachedCheckpoints counts the checkpoints the workers' caches hold in
// the emulators' models folders of the stack in dir, by emulator.
func cachedCheckpoints(dir string) (perWorker []int, total int) {
	sims, _ := filepath.Glob(filepath.Join(dir, "comfysim-*"))
	slices.SortFunc(sims, func(a, b string) int { return cmp.Compare(len(a), len(b))*2 + cmp.Compare(a, b) })
	for _, sim := range sims {
		entries, _ := os.ReadDir(filepath.Join(sim, "models", "checkpoints"))
		n := 0
		for _, e := range entries {
			if e.Type().IsRegular() && strings.HasPrefix(e.Name(), "mixed-") {
				n++
			}
		}
		perWorker = append(perWorker, n)
		total += n
	}
	return perWorker, total
}

// mixedRun runs the jobs, order[i] being the checkpoint of job i, on a
// new stack with the settings env; tag marks the run's job IDs.
func (r *runner) mixedRun(ctx context.Context, name, tag string, env map[string]string, ckpts []string, order []int) (MixedRun, error) {
	cfg := r.cfg
	s, err := r.open(ctx, "mixed-models-"+name, stackSpec{Workers: cfg.MixedWorkers, StepDelay: cfg.StepDelay,
		ModelLoadDelay: max(cfg.LoadDelay, 0), Checkpoints: ckpts, Env: env}, 2)
	if err != nil {
		return MixedRun{}, err
	}
	defer s.close()
	seed := randomSeed()
	jobs := make([]batchJob, len(order))
	model := map[string]int{}
	for i, m := range order {
		j, err := newBatchJob(fmt.Sprintf("bench-%s-m%s%06d", r.runID, tag, i), runInput(workflowOn(ckpts[m], cfg.Size, seed)))
		if err != nil {
			return MixedRun{}, err
		}
		jobs[i], model[j.ID] = j, m
		seed++
	}
	group := "mixed-" + name
	pr, err := submitAndWait(ctx, s.bus, s.w, s.api, group, jobs)
	run := MixedRun{Completed: pr.Completed, Failed: pr.Failed, MakespanSeconds: pr.Seconds, Incomplete: pr.Incomplete}
	for _, st := range s.st.dev.EmulatorStats() {
		run.Loads += st.ModelLoads
		run.LoadsPerWorker = append(run.LoadsPerWorker, st.ModelLoads)
	}
	run.LoadSeconds = round3(float64(run.Loads) * max(cfg.LoadDelay, 0).Seconds())
	run.ReplayedLoads, run.JobsPerWorker = replayLoads(s.w.members(group), model)
	return run, err
}

// replayLoads counts the loads the placement of the jobs implies: by
// worker, in the order the jobs started, one per change of model (the
// first job of a worker included).
func replayLoads(jobs map[string]jobTrack, model map[string]int) (loads int, perWorker []int) {
	type start struct {
		at    time.Time
		model int
	}
	byWorker := map[string][]start{}
	for id, t := range jobs {
		if t.WorkerID == "" {
			continue
		}
		byWorker[t.WorkerID] = append(byWorker[t.WorkerID], start{t.Started, model[id]})
	}
	for _, starts := range byWorker {
		slices.SortFunc(starts, func(a, b start) int { return a.at.Compare(b.at) })
		for i, s := range starts {
			if i == 0 || s.model != starts[i-1].model {
				loads++
			}
		}
		perWorker = append(perWorker, len(starts))
	}
	slices.SortFunc(perWorker, func(a, b int) int { return b - a })
	return loads, perWorker
}

// mixedOracle is the offline schedule that groups the jobs by model:
// every worker holds one model for the whole run and loads it once.
// perModel[k] jobs of model k, each of length job, a load of length
// load, on workers workers.
//
// With at least as many workers as models, each model with jobs gets a
// worker; a spare worker goes to the model that ends last, splitting its
// jobs, while that brings the end forward; then any worker whose removal
// keeps the makespan is taken back, so the schedule has the fewest loads
// for its makespan. With fewer workers than models, whole models go to
// the least loaded worker, longest first (one load each). No schedule
// loads fewer than the number of models (MinLoads); one that keeps all
// workers busy may end sooner than this one at the price of more loads,
// but none ends before MakespanBoundSeconds.
func mixedOracle(perModel []int, workers int, job, load time.Duration) MixedOracle {
	var o MixedOracle
	var active []int // the models with jobs
	total := 0
	for k, n := range perModel {
		if n > 0 {
			active = append(active, k)
			total += n
		}
	}
	o.MinLoads = len(active)
	o.WorkersPerModel = make([]int, len(perModel))
	if len(active) == 0 || workers <= 0 {
		return o
	}
	p, l := job.Seconds(), load.Seconds()
	o.MakespanBoundSeconds = round3(max((float64(total)*p+float64(len(active))*l)/float64(workers), l+p))
	finish := func(k, w int) float64 {
		return l + math.Ceil(float64(perModel[k])/float64(w))*p
	}
	w := o.WorkersPerModel
	if workers < len(active) {
		byWork := slices.Clone(active)
		slices.SortStableFunc(byWork, func(a, b int) int { return perModel[b] - perModel[a] })
		ends := make([]float64, workers)
		for _, k := range byWork {
			i := slices.Index(ends, slices.Min(ends))
			ends[i] += finish(k, 1)
			w[k] = 1
		}
		o.Loads, o.MakespanSeconds = len(active), round3(slices.Max(ends))
		return o
	}
	makespan := func() float64 {
		m := 0.0
		for _, k := range active {
			m = max(m, finish(k, w[k]))
		}
		return m
	}
	for _, k := range active {
		w[k] = 1
	}
	for spare := workers - len(active); spare > 0; spare-- {
		last := active[0]
		for _, k := range active {
			if finish(k, w[k]) > finish(last, w[last]) {
				last = k
			}
		}
		if finish(last, w[last]+1) >= finish(last, w[last]) {
			break // more workers do not shorten it: n_k ≤ w_k
		}
		w[last]++
	}
	end := makespan()
	for _, k := range active {
		for w[k] > 1 && finish(k, w[k]-1) <= end {
			w[k]--
		}
	}
	for _, k := range active {
		o.Loads += w[k]
	}
	o.MakespanSeconds = round3(end)
	return o
}

func (res *MixedResult) print(w io.Writer) {
	fmt.Fprintf(w, "%d jobs over %d checkpoints (%s jobs) in a seeded random order (seed %d), %d workers;\n"+
		"the emulators hold one checkpoint in VRAM and take %.0f ms to load another; jobs of %s (%.0f ms)\n",
		res.Jobs, res.Models, joinInts(res.JobsPerModel, "/"), res.Seed, res.Workers, res.LoadDelayMS, steps(res.StepDelayMS), res.JobMS)
	tw := newTable(w)
	fmt.Fprintln(tw, "\tloads\t× oracle\treplayed\tper worker\tjobs per worker\tmakespan s\tdone")
	row := func(name string, r MixedRun, ratio float64) {
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%d\t%s\t%s\t%.2f\t%d/%d\n", name, r.Loads, ratio, r.ReplayedLoads,
			joinInts64(r.LoadsPerWorker, "/"), joinInts(r.JobsPerWorker, "/"), r.MakespanSeconds, r.Completed, res.Jobs)
	}
	row("model-aware ("+res.Aware.Setting+")", res.Aware, res.AwareRatio)
	row("model-blind ("+res.Blind.Setting+")", res.Blind, res.BlindRatio)
	fmt.Fprintf(tw, "oracle: jobs grouped by model, offline\t%d\t1.00\t\t%s workers a model\t\t%.2f\t\n",
		res.Oracle.Loads, joinInts(res.Oracle.WorkersPerModel, "/"), res.Oracle.MakespanSeconds)
	fmt.Fprintf(tw, "bound of any schedule\t%d\t\t\t\t\t%.2f\t\n", res.Oracle.MinLoads, res.Oracle.MakespanBoundSeconds)
	tw.Flush()
	fmt.Fprintf(w, "goal: model loads ≤ 1.1 × the oracle's (≤ %.1f); model-aware %.2f ×, model-blind %.2f ×\n",
		1.1*float64(res.Oracle.Loads), res.AwareRatio, res.BlindRatio)
	if u := res.ByURL; u != nil {
		u.print(w, res.Jobs)
	}
}

func (u *MixedByURL) print(w io.Writer, jobs int) {
	fmt.Fprintf(w, "\nby URL: the same jobs name their checkpoints by URL on a loopback file server (%d KB files);\n"+
		"each worker fetches them into its own model cache, its emulator's models folder\n", u.FileBytes>>10)
	tw := newTable(w)
	fmt.Fprintln(tw, "\tdownloads\tGETs\tcached per worker\tloads\tper worker\tjobs per worker\tmakespan s\tdone")
	row := func(name string, r MixedURLRun) {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%d\t%s\t%s\t%.2f\t%d/%d\n", name, r.Downloads, r.GETs, joinInts(r.CachedPerWorker, "/"),
			r.Loads, joinInts64(r.LoadsPerWorker, "/"), joinInts(r.JobsPerWorker, "/"), r.MakespanSeconds, r.Completed, jobs)
	}
	row("model-aware ("+u.Aware.Setting+")", u.Aware)
	row("model-blind ("+u.Blind.Setting+")", u.Blind)
	fmt.Fprintf(tw, "oracle: jobs grouped by model, offline\t%d\t\t\t%d\t\t\t\t\n", u.OracleDownloads, u.OracleDownloads)
	fmt.Fprintf(tw, "bound of any schedule: one download a model\t%d\t\t\t%d\t\t\t\t\n", u.MinDownloads, u.MinDownloads)
	tw.Flush()
}

func joinInts(v []int, sep string) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = fmt.Sprint(n)
	}
	return strings.Join(s, sep)
}

func joinInts64(v []int64, sep string) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = fmt.Sprint(n)
	}
	return strings.Join(s, sep)
}
