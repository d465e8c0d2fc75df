package status

import (
	"context"

	"github.com/comfyfleet/comfyfleet/proto"
)

// opCancelQueued is the script's name for CancelQueued.
const opCancelQueued = "cancelqueued"

// CancelQueued cancels a job only while it waits in the queue, as RunPod's
// /purge-queue does: IN_QUEUE becomes CANCELLED (like Cancel), IN_PROGRESS
// gives ErrIllegal (a running job continues), a terminal record gives
// ErrTerminal, each with the current record. The check and the change are
// one atomic step, so a job a worker claims at the same moment either runs
// or is cancelled before it starts, never cancelled while running.
func (s *Store) CancelQueued(ctx context.Context, id string) (*proto.Record, error) {
	return s.change(ctx, opCancelQueued, id, proto.StatusCancelled, 0)
}
