package startstop_test

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/comfyfleet/comfyfleet/internal/startstop"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStartStop(t *testing.T) {
	t.Parallel()
	var s startstop.Service
	s.Stop() // safe without Start
	var runs, ends atomic.Int32
	started := make(chan struct{}, 1)
	loop := func(ctx context.Context) {
		runs.Add(1)
		started <- struct{}{}
		<-ctx.Done()
		ends.Add(1)
	}
	for range 20 { // a start/stop stress
		require.NoError(t, s.Start(context.Background(), loop))
		<-started
		require.ErrorIs(t, s.Start(context.Background(), loop), startstop.ErrStarted)
		s.Stop()
		s.Stop() // idempotent
	}
	require.Equal(t, int32(20), runs.Load())
	require.Equal(t, int32(20), ends.Load(), "Stop waits for the loop")
}

func TestParentCancelDoesNotStop(t *testing.T) {
	t.Parallel()
	var s startstop.Service
	ctx, cancel := context.WithCancel(context.Background())
	alive := make(chan context.Context, 1)
	require.NoError(t, s.Start(ctx, func(ctx context.Context) { alive <- ctx; <-ctx.Done() }))
	loopCtx := <-alive
	cancel()
	require.NoError(t, loopCtx.Err(), "only Stop ends the loop")
	s.Stop()
	require.Error(t, loopCtx.Err())
}
