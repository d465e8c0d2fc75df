// Package backoff computes exponential delays with full jitter, for loops
// that retry an operation against a server that is failing.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff doubles from Min to Max; each delay is drawn uniformly from the
// upper half of the current step. The zero value is not usable: use New.
type Backoff struct {
	min, max, cur time.Duration
}

// New returns a backoff between min and max.
func New(min, max time.Duration) *Backoff { return &Backoff{min: min, max: max} }

// Next returns the next delay.
func (b *Backoff) Next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else if b.cur *= 2; b.cur > b.max {
		b.cur = b.max
	}
	return b.cur/2 + rand.N(b.cur/2+1)
}

// Reset starts again from Min.
func (b *Backoff) Reset() { b.cur = 0 }

// Wait sleeps for Next or until ctx ends, and reports whether ctx is alive.
func (b *Backoff) Wait(ctx context.Context) bool {
	t := time.NewTimer(b.Next())
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
