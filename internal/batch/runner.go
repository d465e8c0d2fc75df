package batch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/lifecycle"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/rdb"
	"github.com/comfyfleet/comfyfleet/internal/ssrf"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Deps are the backends a Runner works with.
type Deps struct {
	Queue *queue.Client
	// Core submits, reads and cancels the jobs.
	Core *lifecycle.Core
	// DB holds the batch index.
	DB *rdb.DB
	// Blobs is where outputs without S3 are; nil when downloads are off.
	Blobs blob.Store
	// Downloads guards the fetches of outputs given as URLs (s3_url): their
	// URLs come from the jobs' records, so they go through the SSRF guard
	// like every outside URL ([DownloadGuard]). nil means a guard with no
	// exceptions, https only.
	Downloads *ssrf.Guard
	Logger    *zap.Logger
}

// Options configure a Submit or a Watch. The zero value of each field is
// its default, except BatchID and Out, which are required.
type Options struct {
	BatchID string
	// Tenant owns every job: they are submitted on
	// cf.submit.batch.<tenant>; "" means the default tenant.
	Tenant string
	// Pool, Lane, Webhook, Policy and S3Prefix go into every job (a
	// RunPod-style item's own webhook and policy win). Lane "" is batch.
	Pool     string
	Lane     proto.Lane
	Webhook  string
	Policy   proto.Policy
	S3Prefix string
	// Retention is how long finished jobs' records are kept; 0 means
	// DefaultRetention.
	Retention time.Duration

	// Out is the folder of the results and the manifest.
	Out string
	// NoDownload leaves outputs in the blob store or S3; the manifest
	// still lists them.
	NoDownload bool
	// Parallel bounds the status reads, submissions and downloads in
	// flight; 0 means 8.
	Parallel int
	// Detach returns once every item is submitted (Submit only).
	Detach bool
	// RetryFailed sends a new job (a new try, see [AttemptID]) for every
	// item whose latest job FAILED or TIMED_OUT, RetryCancelled for every
	// one whose latest job was CANCELLED (Submit only). Without them such
	// items keep their result, and the batch does not complete.
	RetryFailed, RetryCancelled bool
	// Reconcile is how often every unfinished item's record is read, in
	// case an event was missed; 0 means 3 s.
	Reconcile time.Duration

	// Output receives the progress; nil discards it. Terminal draws a bar
	// instead of plain lines.
	Output   io.Writer
	Terminal bool
}

// DefaultRetention is how long a batch job's record is kept after it
// finishes, the same as the blob store keeps its outputs, so a batch can
// be resumed and downloaded for a day.
const DefaultRetention = blob.DefaultTTL

// Validate reports the first option that cannot be used.
func (o Options) Validate() error {
	if err := ValidBatchID(o.BatchID); err != nil {
		return err
	}
	if o.Pool != "" {
		if err := proto.ValidID(o.Pool); err != nil {
			return fmt.Errorf("pool: %w", err)
		}
	}
	if o.Tenant != "" {
		if err := proto.ValidID(o.Tenant); err != nil {
			return fmt.Errorf("tenant: %w", err)
		}
	}
	if o.Lane != "" && !o.Lane.Valid() {
		return fmt.Errorf("lane %q: use %q or %q", o.Lane, proto.LaneBatch, proto.LaneInteractive)
	}
	if o.Out == "" {
		return errors.New("output folder: empty")
	}
	if o.Retention < 0 || o.Policy.TTL < 0 || o.Policy.ExecutionTimeout < 0 || o.Parallel < 0 {
		return errors.New("retention, ttl, timeout and parallel must not be negative")
	}
	// The dispatcher's bounds, checked before anything is sent.
	if err := proto.ValidPolicy(o.Policy); err != nil {
		return err
	}
	if o.Retention > proto.Millis(proto.MaxRetention) {
		return fmt.Errorf("retention %s is more than the limit of %s", o.Retention, proto.Millis(proto.MaxRetention))
	}
	if o.Webhook != "" {
		if err := proto.ValidWebhook(o.Webhook); err != nil {
			return fmt.Errorf("webhook %w", err)
		}
	}
	return nil
}

func (o Options) withDefaults() Options {
	if o.Lane == "" {
		o.Lane = proto.LaneBatch
	}
	if o.Retention == 0 {
		o.Retention = DefaultRetention
	}
	if o.Parallel == 0 {
		o.Parallel = 8
	}
	if o.Reconcile == 0 {
		o.Reconcile = 3 * time.Second
	}
	if o.Output == nil {
		o.Output = io.Discard
	}
	return o
}

// indexTTL keeps the index as long as a job of the batch may live: its
// TTL in the queue plus its retention after it finished.
func (o Options) indexTTL() time.Duration {
	ttl := rdb.DefaultTTL
	if o.Policy.TTL > 0 {
		ttl = proto.Millis(o.Policy.TTL)
	}
	return ttl + o.Retention + time.Hour
}

// Summary is the outcome of a Submit or a Watch.
type Summary struct {
	BatchID string
	Out     string
	Counts  Counts
	// Submitted counts the jobs this run submitted, Skipped the items
	// finished before it started, Resumed those it found on the fleet.
	// Retried counts the items given a new try, whose jobs are among the
	// submitted.
	Submitted, Skipped, Resumed, Retried int
	// DownloadErrors counts finished items with a file not downloaded.
	DownloadErrors int
	// Interrupted is set when ctx ended before every item finished.
	Interrupted bool
}

// OK reports whether every item completed and every file was downloaded.
func (s *Summary) OK() bool {
	return !s.Interrupted && s.Counts.Done == s.Counts.Total && s.DownloadErrors == 0
}

// Runner submits and follows batches.
type Runner struct {
	d   Deps
	log *zap.Logger
}

// New returns a Runner.
func New(d Deps) *Runner {
	if d.Logger == nil {
		d.Logger = zap.NewNop()
	}
	if d.Downloads == nil {
		d.Downloads, _ = DownloadGuard(nil, false, Endpoints{})
	}
	return &Runner{d: d, log: d.Logger.Named("batch")}
}

// Submit sends the items as one batch and follows it until every item
// finished (or, with Detach, until every item is submitted), downloading
// results as they come. Run again with the same items, it resumes: items
// in the manifest are skipped, jobs on the fleet are followed, and only
// the missing ones are submitted; with RetryFailed or RetryCancelled, the
// items whose latest job failed or was cancelled get a new one. When ctx
// ends, Submit returns with Summary.Interrupted set and the jobs keep
// running on the fleet.
func (r *Runner) Submit(ctx context.Context, items []Item, opts Options) (*Summary, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	if len(items) == 0 {
		return nil, errors.New("submit batch: no items")
	}
	man, bad, err := openManifest(opts.Out)
	if err != nil {
		return nil, err
	}
	defer r.closeManifest(man)
	// The index knows the latest try of each item sent before, also one
	// the manifest has no result of yet.
	_, known, err := r.d.DB.LoadBatch(ctx, opts.BatchID)
	if err != nil && !errors.Is(err, rdb.ErrBatchNotFound) {
		return nil, fmt.Errorf("submit batch: %w", err)
	}
	knownTry := make(map[string]rdb.IndexItem, len(known))
	for _, k := range known {
		knownTry[k.Name] = k
	}
	states := make([]*itemState, len(items))
	for i := range items {
		it := &items[i]
		first := JobID(opts.BatchID, *it)
		try := 1
		for _, res := range man.results[it.Name] {
			if n, ok := tryOf(first, res.JobID); ok {
				try = max(try, n)
			}
		}
		if n, ok := tryOf(first, knownTry[it.Name].JobID); ok {
			try = max(try, n)
		}
		states[i] = &itemState{item: it, first: first,
			IndexItem: rdb.IndexItem{Name: it.Name, JobID: AttemptID(first, try), Index: it.Index, Try: try, Params: it.Params}}
	}
	if opts.RetryFailed || opts.RetryCancelled {
		if err := r.planRetries(ctx, opts, man, states); err != nil {
			return nil, err
		}
	}
	meta := rdb.BatchMeta{ID: opts.BatchID, Items: len(items), Pool: opts.Pool, Lane: opts.Lane,
		Source: proto.SourceBatch, Tenant: opts.Tenant, CreatedAt: time.Now().UTC()}
	idx := make([]rdb.IndexItem, len(states))
	for i, st := range states {
		idx[i] = st.IndexItem
	}
	if err := r.d.DB.PutBatch(ctx, meta, idx, opts.indexTTL()); err != nil {
		return nil, fmt.Errorf("submit batch: %w", err)
	}
	return r.follow(ctx, opts, states, true, man, bad)
}

// retryable reports whether an item whose latest job ended with st gets a
// new try.
func (o Options) retryable(st proto.Status) bool {
	switch st {
	case proto.StatusFailed, proto.StatusTimedOut:
		return o.RetryFailed
	case proto.StatusCancelled:
		return o.RetryCancelled
	}
	return false
}

// planRetries gives a new try to every item whose latest job ended in a
// status that opts retries: its state then names the new job, which the
// run submits. The latest job's status comes from the manifest or, when
// the manifest has no result of it (a run that detached or was stopped),
// from its record, and that result goes into the manifest, so that it
// keeps every try. Items still on the fleet, or never sent, are left as
// they are.
func (r *Runner) planRetries(ctx context.Context, opts Options, man *manifest, states []*itemState) error {
	type read struct {
		st  *itemState
		rec *proto.Record
		err error
	}
	var toRead []*itemState
	for _, st := range states {
		if res, ok := man.results.job(st.Name, st.JobID); ok && res.Status.Terminal() {
			if opts.retryable(res.Status) {
				st.retry = true
			}
			continue
		}
		toRead = append(toRead, st)
	}
	reads := make(chan read)
	sem := make(chan struct{}, opts.Parallel)
	go func() {
		var wg sync.WaitGroup
		for _, st := range toRead {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				rec, err := r.d.Core.Get(ctx, st.JobID)
				if errors.Is(err, rdb.ErrNotFound) {
					rec, err = nil, nil
				}
				reads <- read{st: st, rec: rec, err: err}
			})
		}
		wg.Wait()
		close(reads)
	}()
	var firstErr error
	for rd := range reads {
		switch {
		case rd.err != nil:
			if firstErr == nil {
				firstErr = fmt.Errorf("read item %s (job %s): %w", rd.st.Name, rd.st.JobID, rd.err)
			}
		case rd.rec != nil && rd.rec.Status.Terminal() && opts.retryable(rd.rec.Status):
			res := ResultOf(rd.rec, rd.st.Name, rd.st.Index, rd.st.Params)
			res.Try = rd.st.Try
			if err := man.add(res); err != nil && firstErr == nil {
				firstErr = err
			}
			rd.st.retry = true
		}
	}
	if firstErr != nil {
		return fmt.Errorf("submit batch: %w", firstErr)
	}
	for _, st := range states {
		if !st.retry {
			continue
		}
		st.Try++
		st.JobID = AttemptID(st.first, st.Try)
		if err := proto.ValidID(st.JobID); err != nil {
			return fmt.Errorf("retry item %s: %w", st.Name, err)
		}
	}
	return nil
}

// closeManifest rewrites the manifest at the end of a run.
func (r *Runner) closeManifest(man *manifest) {
	if err := man.close(); err != nil {
		r.log.Warn("rewrite manifest", zap.Error(err))
	}
}

// Watch follows a batch that was submitted before, by its id alone, as
// Submit does after submitting: it waits for the items still on the fleet
// and downloads every result not yet in the output folder. Items that were
// never submitted are reported, not waited for.
func (r *Runner) Watch(ctx context.Context, opts Options) (*Summary, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	_, idx, err := r.d.DB.BatchMembers(ctx, opts.BatchID)
	if errors.Is(err, rdb.ErrBatchNotFound) {
		if _, jerr := r.d.Core.Get(ctx, opts.BatchID); jerr == nil {
			return nil, fmt.Errorf("%s is a job, not a batch: show it with comfyfleet status %s, fetch its files with comfyfleet get %s",
				opts.BatchID, opts.BatchID, opts.BatchID)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("watch batch: %w", err)
	}
	man, bad, err := openManifest(opts.Out)
	if err != nil {
		return nil, err
	}
	defer r.closeManifest(man)
	states := make([]*itemState, len(idx))
	for i := range idx {
		states[i] = &itemState{IndexItem: idx[i]}
		states[i].Try = max(states[i].Try, 1)
	}
	return r.follow(ctx, opts, states, false, man, bad)
}

// itemState is the run's view of one item. Only the run's loop touches it.
type itemState struct {
	rdb.IndexItem              // JobID is the job of this run, Try its try
	first         string       // the item's first job (Submit only)
	retry         bool         // this run gives the item a new try
	item          *Item        // nil when watching
	status        proto.Status // last known; "" before any record was seen
	sent          bool         // its submission was acknowledged
	unsent        bool         // watching: never submitted
	checked       bool         // read at least once in this run
	final         bool         // its result is in the manifest
	busy          bool         // a task for it is in flight
	dirty         bool         // a terminal event came while busy
}

type task struct {
	id     string
	name   string
	index  int
	try    int
	params map[string]json.RawMessage
	item   *Item // set when the task may submit
	sent   bool
}

type taskResult struct {
	st        *itemState
	rec       *proto.Record // nil: no record
	submitted bool
	result    *Result // set once the item is terminal
	err       error
}

// follow runs the loop of a Submit (submit set) or a Watch, writing to
// man, the output folder's manifest, of which bad lines were skipped.
func (r *Runner) follow(ctx context.Context, opts Options, states []*itemState, submit bool, man *manifest, bad int) (*Summary, error) {
	sum := &Summary{BatchID: opts.BatchID, Out: opts.Out}
	if bad > 0 {
		r.log.Warn("manifest lines skipped", zap.Int("lines", bad), zap.String("path", opts.Out))
	}
	sent, err := r.d.DB.BatchSent(ctx, opts.BatchID)
	if err != nil {
		return nil, err
	}
	// Watching a batch from another producer (or one whose index lost its
	// sent set), what has no record yet is taken as on its way.
	allSent := !submit && len(sent) == 0
	byID := make(map[string]*itemState, len(states))
	for _, st := range states {
		byID[st.JobID] = st
		st.sent = sent[st.JobID] || allSent
		if st.retry {
			sum.Retried++
		}
		if res, ok := man.results.latest(st.Name); ok && res.JobID == st.JobID && res.Status.Terminal() &&
			res.DownloadError == "" && (opts.NoDownload || filesPresent(opts.Out, res)) {
			st.final, st.checked, st.status = true, true, res.Status
			sum.Skipped++
			if res.Index != st.Index {
				man.reindex(st.Name, st.Index)
			}
		}
	}

	prog := newProgress(opts.Output, opts.Terminal, time.Now())
	verb := "watching"
	if submit {
		verb = "submitting"
	}
	if submit {
		prog.line("batch %s: %s %d item(s) to lane %s, results in %s", opts.BatchID, verb, len(states), opts.Lane, opts.Out)
	} else {
		prog.line("batch %s: %s %d item(s), results in %s", opts.BatchID, verb, len(states), opts.Out)
	}

	// Subscribe before the first read, so no transition falls in between.
	events := make(chan *proto.Event, 4096)
	var overflow atomic.Bool
	stopEvents, err := r.d.Queue.SubscribeStatuses(func(ev *proto.Event) {
		if ev.Type != proto.EventStatus {
			return
		}
		if _, ok := byID[ev.JobID]; !ok {
			return
		}
		select {
		case events <- ev:
		default:
			overflow.Store(true)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("follow batch %s: %w", opts.BatchID, err)
	}
	defer stopEvents()

	// Workers read records, submit and download; the loop below owns
	// every itemState.
	wctx, cancelWork := context.WithCancel(ctx)
	work := make(chan task)
	results := make(chan taskResult)
	var wg sync.WaitGroup
	dl := &downloader{blobs: r.d.Blobs, guard: r.d.Downloads, out: opts.Out}
	for range opts.Parallel {
		wg.Go(func() {
			for t := range work {
				res := r.do(wctx, opts, dl, t)
				res.st = byID[t.id]
				select {
				case results <- res:
				case <-wctx.Done():
					return
				}
			}
		})
	}
	defer func() {
		cancelWork()
		close(work)
		wg.Wait()
	}()

	var pending []*itemState
	enqueue := func(st *itemState) {
		if st.busy || st.final {
			return
		}
		st.busy = true
		pending = append(pending, st)
	}
	firstPass := 0 // items not yet read in this run
	for _, st := range states {
		if !st.final {
			enqueue(st)
			firstPass++
		}
	}
	prog.base = len(states) - firstPass
	finals := prog.base // items whose result is in the manifest
	counts := func() Counts {
		c := Counts{Total: len(states)}
		for _, st := range states {
			switch {
			case st.unsent && st.status == "":
				c.Unsent++
			case st.status == proto.StatusCompleted:
				c.Done++
			case st.status == proto.StatusFailed || st.status == proto.StatusTimedOut:
				c.Failed++
			case st.status == proto.StatusCancelled:
				c.Cancelled++
			case st.status == proto.StatusInProgress:
				c.Running++
			default:
				c.Queued++
			}
		}
		return c
	}
	reportedFirstPass := false
	failures, lastFailure := 0, error(nil) // since the last tick

	reconcile := time.NewTicker(opts.Reconcile)
	defer reconcile.Stop()
	tickEvery := plainEvery / 10
	if opts.Terminal {
		tickEvery = 200 * time.Millisecond
	}
	ticker := time.NewTicker(tickEvery)
	defer ticker.Stop()

	taskOf := func(st *itemState) task {
		t := task{id: st.JobID, name: st.Name, index: st.Index, try: st.Try, params: st.Params, sent: st.sent}
		if submit {
			t.item = st.item
		}
		return t
	}
	finished := func() bool {
		for _, st := range states {
			if st.busy || !st.final && !(st.unsent && st.status == "") {
				return false
			}
		}
		return true
	}

	for {
		if !reportedFirstPass && firstPass == 0 {
			reportedFirstPass = true
			c := counts()
			if submit {
				retries := ""
				if sum.Retried > 0 {
					retries = fmt.Sprintf(" (%d of them new tries of failed or cancelled items)", sum.Retried)
				}
				prog.line("submitted %d new job(s)%s; %d item(s) were in the results already, %d found on the fleet",
					sum.Submitted, retries, sum.Skipped, sum.Resumed)
			} else {
				prog.line("%d item(s) finished, %d on the fleet, %d never submitted", c.Finished(), c.Running+c.Queued, c.Unsent)
			}
			if opts.Detach && submit {
				break
			}
		}
		if finished() {
			break
		}
		var sendCh chan task
		var next task
		if len(pending) > 0 {
			sendCh = work
			next = taskOf(pending[0])
		}
		select {
		case <-ctx.Done():
			sum.Interrupted = true
		case sendCh <- next:
			pending = pending[1:]
		case res := <-results:
			st := res.st
			st.busy = false
			if !st.checked {
				st.checked = true
				firstPass--
				if res.err == nil && res.rec != nil && !res.submitted {
					sum.Resumed++
				}
			}
			switch {
			case res.err != nil:
				// Retried at the next reconcile; reported once a tick.
				failures++
				lastFailure = fmt.Errorf("item %s (job %s): %w", st.Name, st.JobID, res.err)
			case res.result != nil:
				if err := man.add(*res.result); err != nil {
					return nil, err
				}
				st.final, st.status = true, res.result.Status
				finals++
				prog.item(finals, len(states), res.result)
			case res.submitted:
				st.sent = true
				sum.Submitted++
				if st.status == "" {
					st.status = proto.StatusInQueue
				}
			case res.rec != nil:
				if !st.status.Terminal() {
					st.status = res.rec.Status
				}
			case st.sent:
				// On its way through the intake: no record yet.
			default:
				st.unsent = true
			}
			if st.dirty && !st.final {
				st.dirty = false
				enqueue(st)
			}
		case ev := <-events:
			st := byID[ev.JobID]
			if st.final {
				continue
			}
			st.unsent = false
			// The dispatcher's IN_QUEUE event may come after the worker's
			// IN_PROGRESS; a real requeue shows at the next record read.
			if !st.status.Terminal() && !(ev.Status == proto.StatusInQueue && st.status == proto.StatusInProgress) {
				st.status = ev.Status
			}
			if ev.Status.Terminal() {
				if st.busy {
					st.dirty = true
				} else {
					enqueue(st)
				}
			}
		case <-reconcile.C:
			for _, st := range states {
				if !st.final && !st.unsent {
					enqueue(st)
				}
			}
		case <-ticker.C:
			if failures > 0 {
				r.log.Warn("batch items failed; retrying", zap.Int("items", failures), zap.NamedError("last", lastFailure))
				failures, lastFailure = 0, nil
			}
			if overflow.Swap(false) {
				for _, st := range states {
					enqueue(st)
				}
			}
			prog.tick(counts(), time.Now())
		}
		if sum.Interrupted {
			break
		}
	}
	prog.done()
	sum.Counts = counts()
	notSent := 0
	for _, st := range states {
		if res, ok := man.results.latest(st.Name); ok && st.final && res.DownloadError != "" {
			sum.DownloadErrors++
		}
		if submit && !st.sent && !st.final && st.status == "" {
			notSent++
		}
	}
	c := sum.Counts
	open := c.Total - c.Finished() - c.Unsent
	switch {
	case sum.Interrupted:
		prog.line("interrupted: batch %s keeps running on the fleet (%d item(s) not finished).", opts.BatchID, open)
		prog.line("reattach with: comfyfleet watch %s --out %s", opts.BatchID, opts.Out)
	case opts.Detach && submit && open > 0:
		prog.line("detached: %d item(s) on the fleet. Follow with: comfyfleet watch %s --out %s", open-notSent, opts.BatchID, opts.Out)
	default:
		prog.line("batch %s: %s; manifest %s", opts.BatchID, c, filepath.Join(opts.Out, ManifestFile))
		if sum.DownloadErrors > 0 {
			prog.line("%d item(s) have files that could not be downloaded; run watch again to retry.", sum.DownloadErrors)
		}
		if c.Unsent > 0 {
			prog.line("%d item(s) were never submitted: run the submit command again to send them.", c.Unsent)
		}
		if hint := retryHint(c, submit); hint != "" {
			prog.line("%s", hint)
		}
	}
	if notSent > 0 {
		prog.line("%d item(s) were not submitted yet: run the same submit command again to send them.", notSent)
	}
	return sum, nil
}

// retryHint says how to run the items that failed or were cancelled
// again, or "" when there are none.
func retryHint(c Counts, submit bool) string {
	var what, flags []string
	if c.Failed > 0 {
		what = append(what, fmt.Sprintf("%d failed", c.Failed))
		flags = append(flags, "--retry-failed")
	}
	if c.Cancelled > 0 {
		what = append(what, fmt.Sprintf("%d cancelled", c.Cancelled))
		flags = append(flags, "--retry-cancelled")
	}
	if len(what) == 0 {
		return ""
	}
	how := "run the same submit command with " + strings.Join(flags, " ")
	if !submit {
		how = "run the submit command of the batch with " + strings.Join(flags, " ")
	}
	return fmt.Sprintf("not complete: %s item(s); %s to run them again.", strings.Join(what, ", "), how)
}

// filesPresent reports whether every file of r was downloaded and is
// still in the output folder with its size.
func filesPresent(out string, r Result) bool {
	for _, f := range r.Files {
		if f.Path == "" {
			return false
		}
		fi, err := os.Stat(filepath.Join(out, filepath.FromSlash(f.Path)))
		if err != nil || f.Size > 0 && fi.Size() != f.Size {
			return false
		}
	}
	return true
}

// do brings one item up to date: it reads the record; a terminal one
// becomes the item's result (with its files downloaded); a missing one is
// submitted when the task allows it.
func (r *Runner) do(ctx context.Context, opts Options, dl *downloader, t task) taskResult {
	rec, err := r.d.Core.Get(ctx, t.id)
	switch {
	case err == nil && rec.Status.Terminal():
		res := ResultOf(rec, t.name, t.index, t.params)
		res.Try = t.try
		if !opts.NoDownload && res.DownloadError == "" {
			dl.fetch(ctx, &res)
			if ctx.Err() != nil {
				return taskResult{err: ctx.Err()}
			}
		}
		return taskResult{rec: rec, result: &res}
	case err == nil:
		return taskResult{rec: rec}
	case !errors.Is(err, rdb.ErrNotFound):
		return taskResult{err: err}
	case t.item == nil || t.sent:
		return taskResult{}
	}
	job := r.jobOf(opts, t.id, t.item)
	if err := r.d.Core.Submit(ctx, proto.SourceBatch, job, false); err != nil && !errors.Is(err, queue.ErrDuplicate) {
		return taskResult{err: err}
	}
	if err := r.d.DB.MarkBatchSent(ctx, opts.BatchID, []string{t.id}, opts.indexTTL()); err != nil {
		// The job is on the queue; a later run only re-publishes it, and
		// JetStream drops the duplicate.
		r.log.Warn("mark sent", zap.String("job_id", t.id), zap.Error(err))
	}
	return taskResult{submitted: true}
}

// jobOf builds the message of an item.
func (r *Runner) jobOf(opts Options, id string, it *Item) *proto.Job {
	index := it.Index
	job := &proto.Job{
		V: proto.Version, ID: id, Input: it.Input, BatchID: opts.BatchID, Index: &index,
		Pool: opts.Pool, Lane: opts.Lane, Webhook: opts.Webhook, Policy: opts.Policy, Tenant: opts.Tenant,
		Retention: opts.Retention.Milliseconds(), S3Config: it.S3Config,
	}
	if it.Webhook != "" {
		job.Webhook = it.Webhook
	}
	if it.Policy != nil {
		job.Policy = *it.Policy
		if job.Policy.LowPriority {
			job.Lane = proto.LaneBatch
		}
	}
	if opts.S3Prefix != "" {
		job.Output = &proto.OutputSettings{S3Prefix: opts.S3Prefix}
	}
	return job
}
