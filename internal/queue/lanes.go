package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/comfyfleet/comfyfleet/proto"
)

// Lanes reads a pool's two lanes for one worker: a waiting interactive job
// always comes first; a batch job is taken only when no interactive job
// waits. Every BatchEvery-th take looks at the batch lane first, so batch
// work keeps moving under sustained interactive load.
type Lanes struct {
	interactive, batch *Consumer
	batchEvery         int
	takes              int
}

// LanesConfig configures Lanes.
type LanesConfig struct {
	Consumer ConsumerConfig
	// BatchEvery gives the batch lane the first look at every n-th take;
	// 0 means 10, a negative value never.
	BatchEvery int
}

// OpenLanes opens the pool's lane consumers.
func (c *Client) OpenLanes(ctx context.Context, pool string, cfg LanesConfig) (*Lanes, error) {
	inter, err := c.LaneConsumer(ctx, pool, proto.LaneInteractive, cfg.Consumer)
	if err != nil {
		return nil, err
	}
	batch, err := c.LaneConsumer(ctx, pool, proto.LaneBatch, cfg.Consumer)
	if err != nil {
		return nil, err
	}
	if cfg.BatchEvery == 0 {
		cfg.BatchEvery = 10
	}
	return &Lanes{interactive: inter, batch: batch, batchEvery: cfg.BatchEvery}, nil
}

// Next returns the next job by lane priority, waiting up to wait for one.
// While idle it waits on the interactive lane and looks at the batch lane
// between waits, so an idle worker takes a batch job within lanePoll.
func (l *Lanes) Next(ctx context.Context, wait time.Duration) (*Message, error) {
	const lanePoll = 100 * time.Millisecond
	l.takes++
	order := []*Consumer{l.interactive, l.batch}
	if l.batchEvery > 0 && l.takes%l.batchEvery == 0 {
		order[0], order[1] = order[1], order[0]
	}
	deadline := time.Now().Add(wait)
	for {
		for _, c := range order {
			msg, err := c.TryNext(ctx)
			if err == nil || !errors.Is(err, ErrNoMessage) {
				return msg, err
			}
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, ErrNoMessage
		}
		msg, err := l.interactive.Next(ctx, min(left, lanePoll))
		if !errors.Is(err, ErrNoMessage) {
			if err != nil {
				return nil, fmt.Errorf("interactive lane: %w", err)
			}
			return msg, nil
		}
	}
}
