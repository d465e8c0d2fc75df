// Package startstop is the one lifecycle of the fleet's long-running
// parts (river's rivershared/startstop in spirit): Start runs a loop in a
// goroutine and returns at once; Stop cancels the loop's context and waits
// for it, is idempotent, and is safe without Start. A part embeds a
// Service and keeps its loop and its unit of work to itself.
package startstop

import (
	"context"
	"errors"
	"sync"
)

// ErrStarted is returned by Start on a Service that runs.
var ErrStarted = errors.New("already started")

// Service runs one loop at a time. The zero value is ready.
type Service struct {
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// Start runs loop in a goroutine, with a context that Stop cancels (ctx's
// values are kept, its cancellation is not: a part stops when it is told
// to). It returns ErrStarted when a loop already runs.
func (s *Service) Start(ctx context.Context, loop func(ctx context.Context)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done != nil {
		return ErrStarted
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	s.cancel, s.done = cancel, done
	go func() {
		defer close(done)
		loop(ctx)
	}()
	return nil
}

// Stop cancels the loop and waits until it returned. After Stop the
// Service may be started again.
func (s *Service) Stop() {
	s.mu.Lock()
	cancel, done := s.cancel, s.done
	s.cancel, s.done = nil, nil
	s.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	<-done
}
