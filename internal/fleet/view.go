package fleet

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/comfyfleet/comfyfleet/proto"
)

// View is the fleet's state as the dispatcher serves it on /fleet and
// `comfyfleet fleet` shows it: the live workers, every pool's lanes, the
// intake, the dead letters and the job totals.
type View struct {
	Workers []Worker    `json:"workers"`
	Lanes   []LaneDepth `json:"lanes"`
	// Intake is the number of submissions no dispatcher has read yet.
	Intake uint64 `json:"intake"`
	// DLQ is the number of dead letters kept.
	DLQ uint64 `json:"dlq"`
	// Totals counts the jobs that reached each terminal status, and
	// RETRIED, since the counters began.
	Totals map[proto.Status]int64 `json:"totals"`
}

// LaneDepth is one lane of one pool.
type LaneDepth struct {
	Pool string     `json:"pool"`
	Lane proto.Lane `json:"lane"`
	// Queued jobs wait for a worker; Running jobs are held by one.
	Queued  uint64 `json:"queued"`
	Running uint64 `json:"running"`
	// Oldest is when the oldest job still waiting was queued; zero when
	// none waits.
	Oldest time.Time `json:"oldest,omitzero"`
}

// OldestAge is how long the oldest waiting job has waited at now.
func (l LaneDepth) OldestAge(now time.Time) time.Duration {
	if l.Oldest.IsZero() {
		return 0
	}
	return max(now.Sub(l.Oldest), 0)
}

// Sources are what a View is read from. (The view reads JetStream
// directly, not through internal/queue: the queue gives totals only, and
// per-lane depths are needed here.)
type Sources struct {
	Workers   *Registry
	JetStream jetstream.JetStream
	Counts    func(ctx context.Context) (map[proto.Status]int64, error)
}

// ReadView reads the fleet's state.
func ReadView(ctx context.Context, src Sources) (*View, error) {
	v := &View{}
	var err error
	if v.Workers, err = src.Workers.List(ctx); err != nil {
		return nil, err
	}
	sort.Slice(v.Workers, func(i, j int) bool { return v.Workers[i].ID < v.Workers[j].ID })
	if v.Totals, err = src.Counts(ctx); err != nil {
		return nil, err
	}
	if v.Intake, err = streamMsgs(ctx, src.JetStream, proto.SubmitStream); err != nil {
		return nil, err
	}
	if v.DLQ, err = streamMsgs(ctx, src.JetStream, proto.DLQStream); err != nil {
		return nil, err
	}
	jobs, err := src.JetStream.Stream(ctx, proto.JobsStream)
	if err != nil {
		return nil, fmt.Errorf("read stream %s: %w", proto.JobsStream, err)
	}
	ji, err := jobs.Info(ctx, jetstream.WithSubjectFilter(proto.JobSubjects))
	if err != nil {
		return nil, fmt.Errorf("read stream %s: %w", proto.JobsStream, err)
	}
	held := map[string]uint64{}      // subject -> messages delivered, not acked
	delivered := map[string]uint64{} // subject -> last stream sequence delivered
	lister := jobs.ListConsumers(ctx)
	for ci := range lister.Info() {
		held[ci.Config.FilterSubject] += uint64(ci.NumAckPending)
		delivered[ci.Config.FilterSubject] = max(delivered[ci.Config.FilterSubject], ci.Delivered.Stream)
	}
	if err := lister.Err(); err != nil {
		return nil, fmt.Errorf("read consumers of %s: %w", proto.JobsStream, err)
	}
	pools := map[string]bool{}
	for _, w := range v.Workers {
		if w.Pool != "" {
			pools[w.Pool] = true
		}
	}
	for subj := range ji.State.Subjects {
		if p, _, ok := poolLane(subj); ok {
			pools[p] = true
		}
	}
	for subj := range held {
		if p, _, ok := poolLane(subj); ok {
			pools[p] = true
		}
	}
	names := make([]string, 0, len(pools))
	for p := range pools {
		names = append(names, p)
	}
	sort.Strings(names)
	for _, p := range names {
		for _, lane := range []proto.Lane{proto.LaneInteractive, proto.LaneBatch} {
			subj := proto.JobSubject(p, lane)
			total, running := ji.State.Subjects[subj], held[subj]
			running = min(running, total)
			l := LaneDepth{Pool: p, Lane: lane, Queued: total - running, Running: running}
			if l.Queued > 0 {
				// The first message past the last delivery waits longest.
				if m, err := jobs.GetMsg(ctx, delivered[subj]+1, jetstream.WithGetMsgSubject(subj)); err == nil {
					l.Oldest = m.Time
				}
			}
			v.Lanes = append(v.Lanes, l)
		}
	}
	return v, nil
}

func streamMsgs(ctx context.Context, js jetstream.JetStream, name string) (uint64, error) {
	s, err := js.Stream(ctx, name)
	if err != nil {
		return 0, fmt.Errorf("read stream %s: %w", name, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("read stream %s: %w", name, err)
	}
	return info.State.Msgs, nil
}

// poolLane splits "cf.jobs.<pool>.<lane>".
func poolLane(subject string) (string, proto.Lane, bool) {
	parts := strings.Split(subject, ".")
	if len(parts) != 4 || proto.JobSubject(parts[2], proto.Lane(parts[3])) != subject {
		return "", "", false
	}
	return parts[2], proto.Lane(parts[3]), true
}
