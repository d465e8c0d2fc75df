package runpod

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/comfyfleet/comfyfleet/internal/jobview"
	"github.com/comfyfleet/comfyfleet/proto"
)

// maxChunksPerCall bounds one /stream answer; a client gets the rest on
// its next call.
const maxChunksPerCall = 1000

// streamCursorKeep is how long a job's stream cursor is kept after its
// last /stream call.
const streamCursorKeep = 24 * time.Hour

// StreamView is RunPod's /stream answer: always a "stream" array.
type StreamView struct {
	ID     string        `json:"id"`
	Status proto.Status  `json:"status"`
	Stream []StreamChunk `json:"stream"`
}

// StreamChunk is one element of a /stream answer.
type StreamChunk struct {
	Output json.RawMessage `json:"output"`
}

// handleStream answers /stream/{id} with drain semantics: each call returns
// only the chunks (progress events, a RunPod worker's stream posts) that no
// earlier call returned, with the job's status; the last call returns what
// is left together with the terminal status. The position lives in Redis,
// so calls spread over replicas still drain one stream. Without anything
// new the call is held up to ?wait= ms (default StreamWait).
func (a *API) handleStream(w http.ResponseWriter, r *http.Request) {
	id, ok := jobID(w, r)
	if !ok {
		return
	}
	wait, err := parseWait(r, a.cfg.StreamWait, 0)
	if err != nil {
		WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	wake := make(chan struct{}, 1)
	stop, err := a.q.SubscribeEvents(id, func(*proto.Event) {
		select {
		case wake <- struct{}{}:
		default:
		}
	})
	if err != nil {
		a.unavailable(w, "subscribe to job events", err)
		return
	}
	defer stop()
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	// The stored event may trail its live copy by a moment: look again
	// shortly after a wake-up, and now and then in any case.
	poll := time.NewTicker(100 * time.Millisecond)
	defer poll.Stop()
	for {
		rec, ok := a.record(w, r, id)
		if !ok {
			return
		}
		chunks, more, err := a.drain(context.WithoutCancel(ctx), id)
		if err != nil {
			a.unavailable(w, "read job stream", err)
			return
		}
		st := rec.Status
		if st.Terminal() && more {
			st = proto.StatusInProgress // keep the client reading
		}
		if len(chunks) > 0 || st.Terminal() || ctx.Err() != nil {
			if r.Context().Err() != nil && len(chunks) > 0 {
				// The client left; the chunks are lost to it. Nothing
				// better can be done without state per connection.
				return
			}
			WriteJSON(w, http.StatusOK, StreamView{ID: id, Status: st, Stream: chunks})
			return
		}
		select {
		case <-wake:
		case <-poll.C:
		case <-ctx.Done():
		}
	}
}

// drain hands out the job's chunks past its stream cursor and moves the
// cursor over them. more says the call stopped at maxChunksPerCall.
func (a *API) drain(ctx context.Context, id string) (chunks []StreamChunk, more bool, err error) {
	for range 10 {
		cur, err := a.db.StreamCursor(ctx, id)
		if err != nil {
			return nil, false, err
		}
		evs, last, err := a.q.ReadEvents(ctx, id, cur, maxChunksPerCall)
		if err != nil {
			return nil, false, err
		}
		if last == cur {
			return []StreamChunk{}, false, nil
		}
		moved, err := a.db.AdvanceStreamCursor(ctx, id, cur, last, streamCursorKeep)
		if err != nil {
			return nil, false, err
		}
		if !moved {
			continue // another call handed these out; read on from where it stopped
		}
		chunks = make([]StreamChunk, 0, len(evs))
		for _, ev := range evs {
			if c, ok := jobview.Chunk(&ev.Event); ok {
				chunks = append(chunks, StreamChunk{Output: c})
			}
		}
		return chunks, len(evs) == maxChunksPerCall, nil
	}
	return nil, false, fmt.Errorf("drain stream of %s: the cursor keeps moving under concurrent calls", id)
}
