package queue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/comfyfleet/comfyfleet/proto"
)

// Lanes reads the lanes of one or more pools for one worker: a waiting
// interactive job of any of its pools always comes first; a batch job is
// taken only when no interactive job waits. Every BatchEvery-th take looks
// at the batch lanes first, so batch work keeps moving under sustained
// interactive load.
type Lanes struct {
	interactive, batch []*Consumer
	batchEvery         int
	takes              int
	skip               func(pool string, lane proto.Lane) bool
	// pulls is held shared by every look at a lane, from its Skip check
	// to the end of its pull, and alone by Settle.
	pulls sync.RWMutex
}

// LanesConfig configures Lanes.
type LanesConfig struct {
	Consumer ConsumerConfig
	// BatchEvery gives the batch lanes the first look at every n-th take;
	// 0 means 10, a negative value never.
	BatchEvery int
	// MorePools are pools served after the first one, in order.
	MorePools []string
	// Skip, when set, is asked before every look at a lane: a lane it
	// skips is not pulled (a paused lane, or every lane of a draining
	// worker), and its jobs stay queued. A job that a pull already
	// waiting on the server gets after the lane became skipped is given
	// back at once (NAK, no delay; deliveries are not counted); Settle
	// waits until none can. It is called often: keep it to a memory read.
	Skip func(pool string, lane proto.Lane) bool
}

// OpenLanes opens the lane consumers of pool and of cfg.MorePools.
func (c *Client) OpenLanes(ctx context.Context, pool string, cfg LanesConfig) (*Lanes, error) {
	if cfg.BatchEvery == 0 {
		cfg.BatchEvery = 10
	}
	l := &Lanes{batchEvery: cfg.BatchEvery, skip: cfg.Skip}
	for _, p := range append([]string{pool}, cfg.MorePools...) {
		inter, err := c.LaneConsumer(ctx, p, proto.LaneInteractive, cfg.Consumer)
		if err != nil {
			return nil, err
		}
		batch, err := c.LaneConsumer(ctx, p, proto.LaneBatch, cfg.Consumer)
		if err != nil {
			return nil, err
		}
		inter.pool, inter.lane = p, proto.LaneInteractive
		batch.pool, batch.lane = p, proto.LaneBatch
		batch.batch = true
		l.interactive = append(l.interactive, inter)
		l.batch = append(l.batch, batch)
	}
	return l, nil
}

// Next returns the next job by lane priority, waiting up to wait for one.
// While idle it waits on the first pool's interactive lane and looks at the
// other lanes between waits, so an idle worker takes any other job within
// lanePoll.
//
// Takes are counted by the jobs they return: a look that finds nothing
// does not move the batch lanes' turn, so which job is the turn's does
// not depend on how often an idle worker looked.
func (l *Lanes) Next(ctx context.Context, wait time.Duration) (*Message, error) {
	order := append(append([]*Consumer(nil), l.interactive...), l.batch...)
	batchFirst := l.batchEvery > 0 && (l.takes+1)%l.batchEvery == 0
	if batchFirst {
		order = append(append([]*Consumer(nil), l.batch...), l.interactive...)
	}
	msg, err := l.next(ctx, order, batchFirst, wait)
	if err == nil {
		l.takes++
	}
	return msg, err
}

// NextInteractive returns the next job of the interactive lanes only,
// waiting up to wait for one; the batch lanes are left alone. It is safe to
// call while another goroutine is in Next.
func (l *Lanes) NextInteractive(ctx context.Context, wait time.Duration) (*Message, error) {
	return l.next(ctx, l.interactive, false, wait)
}

// Settle returns once no pull that began before it is still open on the
// server. Called after Skip's answer changed, it makes the change
// certain: a lane that Skip now skips gets no job from this Lanes any
// more. A job a pull got before (given back, NAK) stays counted by
// JetStream as delivered until a worker pulls again, so a worker says
// it skips a lane only after Settle. It waits at most for one pull of
// the lanes' poll interval, and is safe to call while another goroutine
// is in Next, NextInteractive or Take.
func (l *Lanes) Settle() {
	l.pulls.Lock()
	defer l.pulls.Unlock()
}

// skipped reports whether the lane of c is not to be pulled now.
func (l *Lanes) skipped(c *Consumer) bool { return l.skip != nil && l.skip(c.pool, c.lane) }

// pause waits d, or until ctx ends: the wait between looks when the lane
// waited on is skipped.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// next looks at the lanes of order, first to last, and waits on the first
// pool's interactive lane between looks until wait is over (on a timer
// while that lane is skipped). batchTurn marks a batch job taken as the
// batch lanes' turn.
func (l *Lanes) next(ctx context.Context, order []*Consumer, batchTurn bool, wait time.Duration) (*Message, error) {
	const lanePoll = 100 * time.Millisecond
	deadline := time.Now().Add(wait)
	for {
		for _, c := range order {
			msg, looked, err := l.look(c, func() (*Message, error) { return c.TryNext(ctx) })
			if !looked {
				continue
			}
			if err == nil && batchTurn && c.batch {
				msg.batchTurn = true
			}
			if err == nil || !errors.Is(err, ErrNoMessage) {
				return msg, err
			}
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, ErrNoMessage
		}
		first := l.interactive[0]
		msg, looked, err := l.look(first, func() (*Message, error) { return first.Next(ctx, min(left, lanePoll)) })
		if !looked {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			pause(ctx, min(left, lanePoll))
			continue
		}
		if !errors.Is(err, ErrNoMessage) {
			if err != nil {
				return nil, fmt.Errorf("interactive lane: %w", err)
			}
			return msg, nil
		}
	}
}

// look pulls from the lane of c with pull unless Skip skips it (looked
// false). A job that came while Skip changed its answer is given back
// (NAK) and reported as none.
func (l *Lanes) look(c *Consumer, pull func() (*Message, error)) (msg *Message, looked bool, err error) {
	l.pulls.RLock()
	defer l.pulls.RUnlock()
	if l.skipped(c) {
		return nil, false, nil
	}
	msg, err = pull()
	if err == nil && l.skipped(c) {
		// The lane was paused (or the worker told to drain) while the
		// pull was open: the job stays queued.
		_ = msg.Nak(0)
		return nil, true, ErrNoMessage
	}
	return msg, true, err
}

// Take returns up to n jobs by lane priority (interactive lanes first),
// waiting up to wait for the first one on the first pool's interactive
// lane and looking at the other lanes between waits. It is the job-take
// host's fetch: a RunPod worker may ask for a batch of jobs.
func (l *Lanes) Take(ctx context.Context, n int, wait time.Duration) ([]*Message, error) {
	const lanePoll = 100 * time.Millisecond
	deadline := time.Now().Add(wait)
	order := append(append([]*Consumer(nil), l.interactive...), l.batch...)
	for {
		var got []*Message
		for _, c := range order {
			for len(got) < n {
				msg, err := c.TryNext(ctx)
				if errors.Is(err, ErrNoMessage) {
					break
				}
				if err != nil {
					return got, err
				}
				got = append(got, msg)
			}
		}
		if len(got) > 0 {
			return got, nil
		}
		left := time.Until(deadline)
		if left <= 0 || ctx.Err() != nil {
			return nil, ErrNoMessage
		}
		msg, err := l.interactive[0].Next(ctx, min(left, lanePoll))
		if err == nil {
			return []*Message{msg}, nil
		}
		if !errors.Is(err, ErrNoMessage) {
			return nil, fmt.Errorf("interactive lane: %w", err)
		}
	}
}
