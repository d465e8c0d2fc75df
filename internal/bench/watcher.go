package bench

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/comfyfleet/comfyfleet/proto"
)

// watcher follows the status events of every job on the fleet (a core
// subscription to cf.events.*.*, as docs/batch.md describes) and counts the
// jobs it was told to track, by group (the jobs of one phase of a
// scenario). Events may come before a job is tracked (a /run job can end
// before its answer is read), so every job is kept.
type watcher struct {
	sub     *nats.Subscription
	changed chan struct{} // gets a token when a tracked job's state changes

	mu     sync.Mutex
	jobs   map[string]*jobTrack
	groups map[string]*counts
}

// jobTrack is what the bench saw of one job, by its own clock.
type jobTrack struct {
	group string // "" until tracked
	// Queued, Started and Ended are when the first IN_QUEUE, IN_PROGRESS
	// and terminal status events arrived; Ended is when a re-read found
	// the job finished if its event was missed.
	Queued, Started, Ended time.Time
	Status                 proto.Status
	WorkerID               string
}

// counts are the tracked jobs by state.
type counts struct {
	Tracked int // jobs tracked
	Seen    int // with at least one status event (admitted, at least)
	Ended   int // in a terminal state
	Failed  int // in a terminal state other than COMPLETED
	// Recovered is the jobs whose end was found by re-reading /status,
	// its event missed: their end times are late.
	Recovered int
}

func (b *bus) watch() (*watcher, error) {
	w := &watcher{changed: make(chan struct{}, 1), jobs: map[string]*jobTrack{}, groups: map[string]*counts{}}
	sub, err := b.nc.Subscribe(proto.EventSubjects, w.handle)
	if err != nil {
		return nil, fmt.Errorf("subscribe to %s: %w", proto.EventSubjects, err)
	}
	// Events come in bursts of thousands; never drop them as a slow consumer.
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("subscribe to %s: %w", proto.EventSubjects, err)
	}
	// The subscription is live on the server before anything is submitted.
	if err := b.nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("subscribe to %s: %w", proto.EventSubjects, err)
	}
	w.sub = sub
	return w, nil
}

func (w *watcher) stop() { _ = w.sub.Unsubscribe() }

func (w *watcher) handle(m *nats.Msg) {
	now := time.Now()
	ev, err := proto.DecodeEvent(m.Data)
	if err != nil || ev.Type != proto.EventStatus {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	t := w.jobs[ev.JobID]
	if t == nil {
		t = &jobTrack{}
		w.jobs[ev.JobID] = t
	}
	first := t.Queued.IsZero() && t.Started.IsZero() && t.Ended.IsZero()
	switch {
	case ev.Status == proto.StatusInQueue && t.Queued.IsZero():
		t.Queued = now
	case ev.Status == proto.StatusInProgress && t.Started.IsZero():
		t.Started, t.WorkerID = now, ev.WorkerID
	case ev.Status.Terminal() && t.Ended.IsZero():
		t.Ended, t.Status = now, ev.Status
		if t.group != "" {
			w.countEnd(t, false)
		}
	default:
		return
	}
	if t.group != "" {
		if first {
			w.groups[t.group].Seen++
		}
		w.signal()
	}
}

// countEnd counts a tracked job's end; w.mu is held.
func (w *watcher) countEnd(t *jobTrack, recovered bool) {
	n := w.groups[t.group]
	n.Ended++
	if t.Status != proto.StatusCompleted {
		n.Failed++
	}
	if recovered {
		n.Recovered++
	}
}

func (w *watcher) signal() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// track starts counting the jobs in group, counting what was seen of
// them already. A job is in one group: the first that tracks it.
func (w *watcher) track(group string, ids ...string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := w.groups[group]
	if n == nil {
		n = &counts{}
		w.groups[group] = n
	}
	for _, id := range ids {
		t := w.jobs[id]
		if t == nil {
			t = &jobTrack{}
			w.jobs[id] = t
		}
		if t.group != "" {
			continue
		}
		t.group = group
		n.Tracked++
		if !t.Queued.IsZero() || !t.Started.IsZero() || !t.Ended.IsZero() {
			n.Seen++
		}
		if !t.Ended.IsZero() {
			w.countEnd(t, false)
		}
	}
	w.signal()
}

// counts returns a group's jobs by state.
func (w *watcher) counts(group string) counts {
	w.mu.Lock()
	defer w.mu.Unlock()
	if n := w.groups[group]; n != nil {
		return *n
	}
	return counts{}
}

// queuedSeen is how many jobs, tracked or not, had an IN_QUEUE event.
func (w *watcher) queuedSeen() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, t := range w.jobs {
		if !t.Queued.IsZero() {
			n++
		}
	}
	return n
}

// members returns what was seen of a group's jobs, by id.
func (w *watcher) members(group string) map[string]jobTrack {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]jobTrack{}
	for id, t := range w.jobs {
		if t.group == group {
			out[id] = *t
		}
	}
	return out
}

// after returns, in ms, how long after t0 the moment that at picks (a
// field of jobTrack) came for each job of a group that got that far.
func (w *watcher) after(group string, t0 time.Time, at func(jobTrack) time.Time) []float64 {
	var out []float64
	for _, t := range w.members(group) {
		if a := at(t); !a.IsZero() {
			out = append(out, ms(a.Sub(t0)))
		}
	}
	return out
}

func queuedAt(t jobTrack) time.Time { return t.Queued }
func endedAt(t jobTrack) time.Time  { return t.Ended }

// inOrder returns what was seen of a group's jobs, by the time they
// started (jobs never seen starting last).
func (w *watcher) inOrder(group string) []jobTrack {
	out := slices.Collect(maps.Values(w.members(group)))
	slices.SortFunc(out, func(a, b jobTrack) int {
		if a.Started.IsZero() != b.Started.IsZero() {
			if a.Started.IsZero() {
				return 1
			}
			return -1
		}
		return a.Started.Compare(b.Started)
	})
	return out
}

// unfinished returns the ids of a group's jobs not known to have ended.
func (w *watcher) unfinished(group string) []string {
	var ids []string
	for id, t := range w.members(group) {
		if t.Ended.IsZero() {
			ids = append(ids, id)
		}
	}
	return ids
}

// job returns what was seen of a job.
func (w *watcher) job(id string) jobTrack {
	w.mu.Lock()
	defer w.mu.Unlock()
	if t := w.jobs[id]; t != nil {
		return *t
	}
	return jobTrack{}
}

// quietAfter is how long the events may stay silent while tracked jobs
// are unfinished before their status is re-read (as the CLI does), in
// case the subscription missed an event.
const quietAfter = 5 * time.Second

// wait blocks until done holds for a group's counts or ctx ends. While
// events stay quiet with the group's jobs unfinished, it re-reads their
// status through api (when not nil).
func (w *watcher) wait(ctx context.Context, api *apiClient, group string, done func(counts) bool) error {
	quiet := time.NewTimer(quietAfter)
	defer quiet.Stop()
	for {
		c := w.counts(group)
		if done(c) {
			return nil
		}
		select {
		case <-w.changed:
			quiet.Reset(quietAfter)
		case <-quiet.C:
			if api != nil {
				w.recheck(ctx, api, group)
			}
			quiet.Reset(quietAfter)
		case <-ctx.Done():
			return fmt.Errorf("wait for jobs (%d tracked, %d admitted, %d finished): %w", c.Tracked, c.Seen, c.Ended, ctx.Err())
		}
	}
}

// recheck re-reads the status of a group's unfinished jobs, at most
// maxRecheck per call, and counts the finished ones.
func (w *watcher) recheck(ctx context.Context, api *apiClient, group string) {
	const maxRecheck = 200
	ids := w.unfinished(group)
	for _, id := range ids[:min(len(ids), maxRecheck)] {
		v, err := api.status(ctx, id)
		if err != nil || !v.Status.Terminal() {
			continue
		}
		w.mu.Lock()
		if t := w.jobs[id]; t.Ended.IsZero() {
			t.Ended, t.Status = time.Now(), v.Status
			w.countEnd(t, true)
		}
		w.mu.Unlock()
	}
	w.signal()
}

// waitStarted blocks until n jobs of a group have started (or ended, an
// IN_PROGRESS event missed) or ctx ends.
func (w *watcher) waitStarted(ctx context.Context, group string, n int) error {
	for {
		started := 0
		for _, t := range w.members(group) {
			if !t.Started.IsZero() || !t.Ended.IsZero() {
				started++
			}
		}
		if started >= n {
			return nil
		}
		select {
		case <-w.changed:
		case <-ctx.Done():
			return fmt.Errorf("wait for %d jobs to start (%d did): %w", n, started, ctx.Err())
		}
	}
}
