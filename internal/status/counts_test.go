package status_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/status"
	"github.com/comfyfleet/comfyfleet/proto"
)

func TestCounts(t *testing.T) {
	conformance(t, status.Options{}, func(t *testing.T, b *bundle) {
		got, err := b.store.Counts(b.ctx)
		require.NoError(t, err)
		require.Empty(t, got)

		b.bring(t, "c1", proto.StatusCompleted)
		b.bring(t, "c2", proto.StatusCompleted)
		b.bring(t, "f1", proto.StatusFailed)
		b.bring(t, "x1", proto.StatusCancelled)
		_, err = b.store.Retry(b.ctx, "f1")
		require.NoError(t, err)
		// A refused transition counts nothing.
		_, err = b.store.Cancel(b.ctx, "c1")
		require.ErrorIs(t, err, status.ErrTerminal)

		got, err = b.store.Counts(b.ctx)
		require.NoError(t, err)
		require.Equal(t, map[proto.Status]int64{
			proto.StatusCompleted: 2, proto.StatusFailed: 1, proto.StatusCancelled: 1, status.CountRetried: 1,
		}, got)
	})
}
