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
// only the chunks (progress events, a RunPod worker's stream posts, and the
// latest preview picture of a job that asked for previews) that no earlier
// call returned, with the job's status; the last call returns what
// is left together with the terminal status. The position lives in Redis,
// so calls spread over replicas still drain one stream. Without anything
// new the call is held up to ?wait= ms (default StreamWait), waking on the
// job's events (queue.Wake): a held call reads nothing while nothing
// happens.
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
	// In place before the first read, so that whatever happens after it
	// wakes this call.
	wake, err := a.q.WakeOnEvents(id)
	if err != nil {
		a.unavailable(w, "subscribe to job events", err)
		return
	}
	defer wake.Stop()
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	woke, lag := false, 0
	for {
		rec, ok := a.record(w, r, id)
		if !ok {
			return
		}
		chunks, more, read, err := a.drain(context.WithoutCancel(ctx), id)
		if err != nil {
			a.unavailable(w, "read job stream", err)
			return
		}
		if !rec.Status.Terminal() {
			// A running job's latest preview, when it asked for previews
			// and no call handed this one out: a finished job's output
			// says the rest.
			c, ok, err := a.latestPreview(context.WithoutCancel(ctx), id)
			if err != nil {
				a.unavailable(w, "read job preview", err)
				return
			}
			if ok {
				chunks, read = append(chunks, c), true
			}
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
		if woke && !read && lag < maxLagReads {
			// Woken, but the stream does not hold the event yet: its live
			// copy can come a moment before the stored one. Look again
			// shortly, a few times (1 ms, 2 ms, … 128 ms).
			t := time.NewTimer(time.Millisecond << lag)
			lag++
			select {
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
			continue
		}
		woke, lag = wake.Wait(ctx) == nil, 0
	}
}

// latestPreview hands out the job's latest preview picture as a chunk
// once: its sequence in the preview stream moves the job's preview cursor
// in Redis, so calls spread over replicas hand out each picture once. A
// picture superseded before a call came is never handed out: previews are
// throttled by what the client reads, at most one per call.
func (a *API) latestPreview(ctx context.Context, id string) (StreamChunk, bool, error) {
	ev, err := a.q.LatestPreview(ctx, id)
	if err != nil || ev == nil {
		return StreamChunk{}, false, err
	}
	cur, err := a.db.PreviewCursor(ctx, id)
	if err != nil || ev.Seq <= cur {
		return StreamChunk{}, false, err
	}
	moved, err := a.db.AdvancePreviewCursor(ctx, id, cur, ev.Seq, streamCursorKeep)
	if err != nil || !moved {
		return StreamChunk{}, false, err
	}
	c, ok := jobview.Chunk(&ev.Event)
	return StreamChunk{Output: c}, ok, nil
}

// maxLagReads bounds the reads after a wake-up that found the event not
// stored yet: about a quarter of a second in all.
const maxLagReads = 8

// drain hands out the job's chunks past its stream cursor and moves the
// cursor over them. more says the call stopped at maxChunksPerCall; read
// says it found any event past the cursor (a chunk or not).
func (a *API) drain(ctx context.Context, id string) (chunks []StreamChunk, more, read bool, err error) {
	for range 10 {
		cur, err := a.db.StreamCursor(ctx, id)
		if err != nil {
			return nil, false, false, err
		}
		evs, last, err := a.q.ReadEvents(ctx, id, cur, maxChunksPerCall)
		if err != nil {
			return nil, false, false, err
		}
		if last == cur {
			return []StreamChunk{}, false, false, nil
		}
		moved, err := a.db.AdvanceStreamCursor(ctx, id, cur, last, streamCursorKeep)
		if err != nil {
			return nil, false, false, err
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
		return chunks, len(evs) == maxChunksPerCall, true, nil
	}
	return nil, false, false, fmt.Errorf("drain stream of %s: the cursor keeps moving under concurrent calls", id)
}
