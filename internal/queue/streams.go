package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/comfyfleet/comfyfleet/proto"
)

// What the streams hold, read in place: queue depths for backpressure and
// the fleet view, and the jobs that wait (for purge-queue). Reading by
// direct get needs no consumer and never disturbs the workers' work-queue
// consumers.

func (c *Client) stream(ctx context.Context, name string) (jetstream.Stream, error) {
	s, err := c.js.Stream(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("open stream %s: %w", name, err)
	}
	return s, nil
}

// Depth counts the jobs waiting (on the intake, hold and jobs streams,
// not yet handed to a worker) and the jobs a worker holds.
func (c *Client) Depth(ctx context.Context) (queued, running uint64, err error) {
	var total uint64
	for _, name := range []string{proto.SubmitStream, proto.HoldStream, proto.JobsStream} {
		s, err := c.stream(ctx, name)
		if err != nil {
			return 0, 0, fmt.Errorf("queue depth: %w", err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			return 0, 0, fmt.Errorf("queue depth: stream %s: %w", name, err)
		}
		total += info.State.Msgs
		if name != proto.JobsStream {
			continue
		}
		lister := s.ListConsumers(ctx)
		for ci := range lister.Info() {
			running += uint64(ci.NumAckPending)
		}
		if err := lister.Err(); err != nil {
			return 0, 0, fmt.Errorf("queue depth: consumers of %s: %w", name, err)
		}
	}
	running = min(running, total)
	return total - running, running, nil
}

// PoolDepth counts the jobs of one pool that wait (held for their turn,
// or on the jobs stream and no worker holds them) and that a worker
// holds. Submissions that no
// dispatcher has admitted yet are not counted: until then the intake
// holds them, and their pool is not decided.
func (c *Client) PoolDepth(ctx context.Context, pool string) (queued, running uint64, err error) {
	s, err := c.stream(ctx, proto.JobsStream)
	if err != nil {
		return 0, 0, fmt.Errorf("pool depth: %w", err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(proto.PoolSubjects(pool)))
	if err != nil {
		return 0, 0, fmt.Errorf("pool depth: %w", err)
	}
	var total uint64
	lanes := map[string]bool{}
	for subj, n := range info.State.Subjects {
		if p, _, ok := poolLane(subj); ok && p == pool {
			total += n
		}
	}
	for _, lane := range []proto.Lane{proto.LaneInteractive, proto.LaneBatch} {
		lanes[proto.JobSubject(pool, lane)] = true
	}
	lister := s.ListConsumers(ctx)
	for ci := range lister.Info() {
		if lanes[ci.Config.FilterSubject] {
			running += uint64(ci.NumAckPending)
		}
	}
	if err := lister.Err(); err != nil {
		return 0, 0, fmt.Errorf("pool depth: %w", err)
	}
	running = min(running, total)
	waiting, err := c.heldIn(ctx, proto.PoolHoldSubjects(pool))
	if err != nil {
		return 0, 0, fmt.Errorf("pool depth: %w", err)
	}
	return total - running + waiting, running, nil
}

// heldIn counts the held jobs whose subjects match filter.
func (c *Client) heldIn(ctx context.Context, filter string) (uint64, error) {
	s, err := c.hold(ctx)
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return 0, fmt.Errorf("read stream %s: %w", proto.HoldStream, err)
	}
	var n uint64
	for _, m := range info.State.Subjects {
		n += m
	}
	return n, nil
}

// LaneQueued counts the jobs of one lane of one pool that no worker
// holds: held for their turn, or on the jobs stream.
func (c *Client) LaneQueued(ctx context.Context, pool string, lane proto.Lane) (uint64, error) {
	subj := proto.JobSubject(pool, lane)
	s, err := c.stream(ctx, proto.JobsStream)
	if err != nil {
		return 0, fmt.Errorf("lane depth: %w", err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(subj))
	if err != nil {
		return 0, fmt.Errorf("lane depth: %w", err)
	}
	total := info.State.Subjects[subj]
	var held uint64
	lister := s.ListConsumers(ctx)
	for ci := range lister.Info() {
		if ci.Config.FilterSubject == subj {
			held += uint64(ci.NumAckPending)
		}
	}
	if err := lister.Err(); err != nil {
		return 0, fmt.Errorf("lane depth: %w", err)
	}
	waiting, err := c.heldIn(ctx, proto.HoldSubject(pool, lane, "*"))
	if err != nil {
		return 0, fmt.Errorf("lane depth: %w", err)
	}
	return total - min(held, total) + waiting, nil
}

// LaneDepth is one lane of one pool.
type LaneDepth struct {
	Pool string     `json:"pool"`
	Lane proto.Lane `json:"lane"`
	// Queued jobs wait for a worker; Running jobs are held by one.
	Queued  uint64 `json:"queued"`
	Running uint64 `json:"running"`
	// Held of the Queued jobs wait in the hold for their turn (fair
	// share between tenants), not on the lane yet.
	Held uint64 `json:"held,omitempty"`
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

// Overview is what the streams hold, for the fleet view.
type Overview struct {
	// Intake is the number of submissions no dispatcher has read yet.
	Intake uint64
	// DLQ is the number of dead letters kept.
	DLQ uint64
	// Lanes are the lanes of every pool that has jobs, a consumer, or is
	// named in pools, in pool order.
	Lanes []LaneDepth
}

// ReadOverview reads the depth of the intake, the dead letters and every
// lane.
func (c *Client) ReadOverview(ctx context.Context, pools []string) (*Overview, error) {
	o := &Overview{}
	var err error
	if o.Intake, err = c.streamMsgs(ctx, proto.SubmitStream); err != nil {
		return nil, err
	}
	if o.DLQ, err = c.streamMsgs(ctx, proto.DLQStream); err != nil {
		return nil, err
	}
	jobs, err := c.stream(ctx, proto.JobsStream)
	if err != nil {
		return nil, err
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
	holds, err := c.Holds(ctx)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for k := range holds {
		seen[k.Pool] = true
	}
	for _, p := range pools {
		if p != "" {
			seen[p] = true
		}
	}
	for subj := range ji.State.Subjects {
		if p, _, ok := poolLane(subj); ok {
			seen[p] = true
		}
	}
	for subj := range held {
		if p, _, ok := poolLane(subj); ok {
			seen[p] = true
		}
	}
	names := make([]string, 0, len(seen))
	for p := range seen {
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
			for tenant, n := range holds[LaneKey{p, lane}] {
				l.Held += n
				// A tenant's first held job is its oldest.
				if h, err := c.FirstHeld(ctx, p, lane, tenant); err == nil && (l.Oldest.IsZero() || h.Time.Before(l.Oldest)) {
					l.Oldest = h.Time
				}
			}
			l.Queued += l.Held
			o.Lanes = append(o.Lanes, l)
		}
	}
	return o, nil
}

func (c *Client) streamMsgs(ctx context.Context, name string) (uint64, error) {
	s, err := c.stream(ctx, name)
	if err != nil {
		return 0, err
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

// Queued is one job message found waiting in a work-queue stream.
type Queued struct {
	Stream string
	Seq    uint64
	JobID  string
	Source string
	Tenant string
	// Pool is the job's pool: its subject's on the jobs stream, the
	// message's on the intake stream ("" when the producer named none,
	// and a dispatcher will place it in its default pool).
	Pool string
}

// EachQueued calls fn for every job message of the given source and
// tenant ("" for every tenant) that is still in the intake stream, the
// hold or the jobs stream (waiting, or handed to a worker and not yet
// acknowledged),
// oldest first. fn returning an error stops the walk.
func (c *Client) EachQueued(ctx context.Context, source, tenant string, fn func(Queued) error) error {
	type walk struct{ stream, subject string }
	var walks []walk
	switch tenant {
	case "":
		walks = []walk{{proto.SubmitStream, proto.SubmitSubject(source, "")}, {proto.SubmitStream, proto.SubmitSubject(source, "*")}}
	case proto.DefaultTenant:
		walks = []walk{{proto.SubmitStream, proto.SubmitSubject(source, "")}, {proto.SubmitStream, proto.SubmitSubject(source, tenant)}}
	default:
		walks = []walk{{proto.SubmitStream, proto.SubmitSubject(source, tenant)}}
	}
	walks = append(walks, walk{proto.HoldStream, proto.HoldSubjects}, walk{proto.JobsStream, proto.JobSubjects})
	for _, w := range walks {
		s, err := c.stream(ctx, w.stream)
		if err != nil {
			return err
		}
		for seq := uint64(1); ; seq++ {
			m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(w.subject))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				break
			}
			if err != nil {
				return fmt.Errorf("read stream %s: %w", w.stream, err)
			}
			seq = m.Sequence
			var head struct {
				ID     string `json:"id"`
				Source string `json:"source"`
				Tenant string `json:"tenant"`
				Pool   string `json:"pool"`
			}
			if json.Unmarshal(m.Data, &head) != nil || head.ID == "" {
				continue
			}
			if w.stream == proto.SubmitStream {
				// The subject says it.
				var err error
				if head.Source, head.Tenant, err = proto.ParseSubmitSubject(m.Subject); err != nil {
					continue
				}
			} else if p, _, tenant, ok := proto.ParseHoldSubject(m.Subject); ok {
				head.Pool, head.Tenant = p, tenant
			} else if p, _, ok := poolLane(m.Subject); ok {
				head.Pool = p
			}
			if head.Tenant == "" {
				head.Tenant = proto.DefaultTenant
			}
			if head.Source != source || (tenant != "" && head.Tenant != tenant) {
				continue
			}
			if err := fn(Queued{Stream: w.stream, Seq: m.Sequence, JobID: head.ID, Source: head.Source, Tenant: head.Tenant, Pool: head.Pool}); err != nil {
				return err
			}
		}
	}
	return nil
}

// DeleteQueued removes a waiting job message found by EachQueued.
func (c *Client) DeleteQueued(ctx context.Context, q Queued) error {
	s, err := c.stream(ctx, q.Stream)
	if err != nil {
		return err
	}
	if err := deleteMsg(ctx, s, q.Seq); err != nil {
		return fmt.Errorf("delete message %d of %s: %w", q.Seq, q.Stream, err)
	}
	return nil
}

// deleteMsg deletes message seq of s; a message that is gone already
// (deleted by another dispatcher, or by a call repeated after a crash) is
// no error. The server says so with error 10057 and "no message found",
// which the jetstream package passes on as text only.
func deleteMsg(ctx context.Context, s jetstream.Stream, seq uint64) error {
	err := s.DeleteMsg(ctx, seq)
	if err == nil || errors.Is(err, jetstream.ErrMsgNotFound) ||
		(strings.Contains(err.Error(), "err_code=10057") && strings.Contains(err.Error(), "no message found")) {
		return nil
	}
	return err
}
