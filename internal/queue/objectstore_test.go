package queue_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/blob/blobtest"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
)

func TestObjectStoreConformance(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	var i atomic.Int32
	blobtest.Run(t, func(t *testing.T) blob.Store {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		st, err := queue.OpenObjectStore(ctx, n.JS, queue.ObjectStoreConfig{Bucket: fmt.Sprintf("conformance-%d", i.Add(1))})
		require.NoError(t, err)
		return st
	})
}
