package comfy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"
)

// RunOptions are the per-prompt options of Submit and Run.
type RunOptions struct {
	// PromptID is the prompt's id; default uuid.NewString(). ComfyUI
	// ≥ v0.25 requires a canonical lowercase UUID.
	PromptID string
	// ExtraData is sent as extra_data (e.g. {"api_key_comfy_org": key} or
	// {"preview_method": "auto"}); nil sends none.
	ExtraData map[string]any
	// OnProgress, when set, receives the prompt's progress reports.
	OnProgress func(Progress)
	// OnPreview, when set, receives the prompt's preview images. Previews
	// that pile up while the callback is slow are dropped.
	//
	// Both callbacks run on the goroutine that called Wait (or Run), one at
	// a time; they never block the WebSocket.
	OnPreview func(Preview)
}

// Submitted is a prompt ComfyUI accepted.
type Submitted struct {
	PromptID string
	Number   json.Number // its place in ComfyUI's queue
	// NodeErrors are the nodes that failed validation although ComfyUI
	// answered 200: the outputs they feed will not run (a partial run).
	NodeErrors []NodeError
}

// Run queues workflow (API-format JSON, sent byte for byte) and waits for it
// to end: Submit followed by Wait.
//
// It returns the Result on success. When the prompt ran but failed it
// returns the Result too (with whatever outputs were saved) together with a
// *ExecutionError or *InterruptedError. When ctx ends first it returns
// ctx's error, wrapped, and the prompt keeps running in ComfyUI: call
// Cancel (or Interrupt) to stop it.
func (c *Client) Run(ctx context.Context, workflow []byte, opts RunOptions) (*Result, error) {
	sub, err := c.Submit(ctx, workflow, opts)
	if err != nil {
		return nil, err
	}
	return c.Wait(ctx, sub.PromptID)
}

// Submit queues workflow and registers the prompt's waiter before posting,
// so no message is missed; follow it with Wait, which releases the waiter
// (a prompt never waited on keeps a small waiter until Close). The WebSocket must be up:
// Submit waits while it is being redialled and fails with ErrUnavailable
// when ComfyUI cannot be reached. A 400 is a *ValidationError.
func (c *Client) Submit(ctx context.Context, workflow []byte, opts RunOptions) (*Submitted, error) {
	if jsonKind(workflow) != '{' || !json.Valid(workflow) {
		return nil, errors.New("queue prompt: workflow is not a JSON object")
	}
	if err := c.awaitConnected(ctx); err != nil {
		return nil, fmt.Errorf("queue prompt: %w", err)
	}
	id := opts.PromptID
	if id == "" {
		id = uuid.NewString()
	}
	w := newWaiter(id, opts)
	c.mu.Lock()
	if _, dup := c.waiters[id]; dup {
		c.mu.Unlock()
		return nil, fmt.Errorf("queue prompt %s: a prompt with this id is already being waited on", id)
	}
	c.waiters[id] = w
	c.mu.Unlock()

	sub, err := c.postPrompt(ctx, workflow, id, opts.ExtraData)
	if err != nil {
		c.unregister(w)
		return nil, err
	}
	if len(sub.NodeErrors) > 0 {
		ids := make([]string, 0, len(sub.NodeErrors))
		for _, ne := range sub.NodeErrors {
			ids = append(ids, ne.NodeID)
		}
		c.log.Warn("prompt queued with node errors: some outputs will not run",
			zap.String("prompt_id", sub.PromptID), zap.Strings("node_ids", ids))
	}
	c.mu.Lock()
	w.nodeErrors = sub.NodeErrors
	if sub.PromptID != id {
		// A server older than v0.3.45 ignores our prompt_id. Messages for
		// its id may already have been dropped: reconcile first.
		delete(c.waiters, id)
		w.id = sub.PromptID
		w.rekeyed = true
		c.waiters[w.id] = w
	}
	c.mu.Unlock()
	return sub, nil
}

// postPrompt sends POST /prompt. The body is assembled by hand so that the
// workflow's bytes go out exactly as given.
func (c *Client) postPrompt(ctx context.Context, workflow []byte, id string, extra map[string]any) (*Submitted, error) {
	var b bytes.Buffer
	b.Grow(len(workflow) + 160)
	b.WriteString(`{"prompt":`)
	b.Write(workflow)
	cid, _ := json.Marshal(c.cfg.ClientID)
	b.WriteString(`,"client_id":`)
	b.Write(cid)
	pid, _ := json.Marshal(id)
	b.WriteString(`,"prompt_id":`)
	b.Write(pid)
	if extra != nil {
		data, err := json.Marshal(extra)
		if err != nil {
			return nil, fmt.Errorf("queue prompt: encode extra_data: %w", err)
		}
		b.WriteString(`,"extra_data":`)
		b.Write(data)
	}
	b.WriteByte('}')

	body, err := c.call(ctx, http.MethodPost, "/prompt", nil, b.Bytes())
	if err != nil {
		var se *StatusError
		if errors.As(err, &se) && se.StatusCode == http.StatusBadRequest {
			ve := ParseValidationError(se.Body)
			c.lookUpOptions(ctx, ve)
			return nil, fmt.Errorf("queue prompt: %w", ve)
		}
		return nil, fmt.Errorf("queue prompt: %w", err)
	}
	var top map[string]json.RawMessage
	if err := unmarshalLenient(body, &top); err != nil || top == nil {
		return nil, fmt.Errorf("queue prompt: undecodable answer %q", truncate(body, 512))
	}
	sub := &Submitted{
		PromptID:   rawString(top["prompt_id"]),
		Number:     rawNumber(top["number"]),
		NodeErrors: decodeNodeErrors(top["node_errors"]),
	}
	if sub.PromptID == "" {
		return nil, fmt.Errorf("queue prompt: %w", &MissingPromptIDError{Body: truncate(body, 512)})
	}
	return sub, nil
}

// lookUpOptions fills ve.Available for value_not_in_list inputs whose
// options ComfyUI left out (more than 20), from GET /object_info/{class}.
// Failures only lose the list, as in worker-comfyui.
func (c *Client) lookUpOptions(ctx context.Context, ve *ValidationError) {
	for _, ic := range ve.InvalidChoices() {
		if ic.Known || ic.ClassType == "" || ic.Input == "" {
			continue
		}
		key := ic.ClassType + "." + ic.Input
		if _, done := ve.Available[key]; done {
			continue
		}
		opts, err := c.InputOptions(ctx, ic.ClassType, ic.Input)
		if err != nil {
			c.log.Debug("could not fetch available options", zap.String("input", key), zap.Error(err))
			continue
		}
		if ve.Available == nil {
			ve.Available = map[string][]string{}
		}
		ve.Available[key] = opts
	}
}

// Wait follows a submitted prompt to its end and reads its history entry.
// The end is `executing` with node null; after a reconnect, and every
// HistoryPollInterval, the prompt is reconciled through /history and
// /queue. Results and errors are as for Run. Wait may also be called for a
// prompt this Client did not submit (or whose earlier Wait returned): it
// then reconciles first, and no callbacks are called. ComfyUI sends a
// prompt's messages only to the socket of its own client_id, so the end of
// another client's prompt is seen by the history poll alone.
func (c *Client) Wait(ctx context.Context, promptID string) (*Result, error) {
	c.mu.Lock()
	switch c.state {
	case stateNew:
		c.mu.Unlock()
		return nil, ErrNotStarted
	case stateClosed:
		c.mu.Unlock()
		return nil, ErrClosed
	}
	w := c.waiters[promptID]
	fresh := w == nil
	if fresh {
		w = newWaiter(promptID, RunOptions{})
		c.waiters[promptID] = w
	}
	if w.active {
		c.mu.Unlock()
		return nil, fmt.Errorf("wait for prompt %s: already being waited on", promptID)
	}
	w.active = true
	reconcileFirst := fresh || w.rekeyed
	c.mu.Unlock()
	defer c.unregister(w)

	res, err := c.follow(ctx, w, reconcileFirst)
	if err != nil {
		return res, fmt.Errorf("prompt %s: %w", promptID, err)
	}
	return res, nil
}

// follow is Wait's loop.
func (c *Client) follow(ctx context.Context, w *waiter, reconcileFirst bool) (*Result, error) {
	var poll <-chan time.Time
	if c.cfg.HistoryPollInterval > 0 {
		t := time.NewTicker(c.cfg.HistoryPollInterval)
		defer t.Stop()
		poll = t.C
	}
	var last *message             // the last outcome message
	seen := map[string]Progress{} // progress_state per node, to report changes only
	needReconcile := reconcileFirst
	for {
		if needReconcile {
			needReconcile = false
			entry, st, err := c.reconcile(ctx, w.id)
			switch {
			case err != nil && ctx.Err() != nil:
				return nil, ctx.Err()
			case err != nil && errIsUnavailable(err) && !c.isDown():
				// ComfyUI is restarting or the network hiccuped: the
				// WebSocket loop decides when it is really gone.
				c.log.Debug("reconcile prompt", zap.String("prompt_id", w.id), zap.Error(err))
			case err != nil:
				return nil, fmt.Errorf("reconcile: %w", err)
			case st == reconDone:
				return c.finish(ctx, w, last, entry, 0)
			case st == reconLost:
				return nil, c.lostError(w)
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-poll:
			needReconcile = true
		case <-w.notify:
			for _, ev := range w.drain() {
				switch ev.kind {
				case evProgress:
					for _, p := range ev.progress {
						if p.State != "" {
							if prev, ok := seen[p.Node]; ok && prev == p {
								continue
							}
							seen[p.Node] = p
						}
						w.opts.OnProgress(p)
					}
				case evPreview:
					w.opts.OnPreview(ev.preview)
				case evOutcome:
					last = ev.msg
				case evDone:
					return c.finish(ctx, w, last, nil, ev.drops)
				case evReconcile:
					needReconcile = true
				case evFail:
					if errors.Is(ev.err, ErrClosed) {
						return nil, ev.err
					}
					// The WebSocket is gone; the prompt may still have
					// finished while it was being redialled.
					if entry, st, err := c.reconcile(ctx, w.id); err == nil && st == reconDone {
						return c.finish(ctx, w, last, entry, 0)
					}
					return nil, ev.err
				}
			}
		}
	}
}

// finish builds the Result from the history entry (read now unless given)
// and the outcome: the entry's status, or the last execution_* message
// when the entry has none. drops is the client's drop count when the end
// was read.
func (c *Client) finish(ctx context.Context, w *waiter, last *message, entry *HistoryEntry, drops uint64) (*Result, error) {
	if entry == nil {
		var err error
		if entry, err = c.historyAfterEnd(ctx, w.id, drops); err != nil {
			return nil, err
		}
	}
	c.mu.Lock()
	nodeErrors := w.nodeErrors
	c.mu.Unlock()
	res := &Result{PromptID: w.id, Entry: entry, NodeErrors: nodeErrors}
	oc, err := entry.outcome(w.id)
	if oc == outcomeNone && last != nil {
		switch last.Outcome {
		case outcomeError:
			err = last.ExecErr
		case outcomeInterrupted:
			err = last.Interrupted
		}
	}
	return res, err
}

// historyAfterEnd reads the history entry after the end signal, retrying
// briefly on {}: a client that saw the end before the history write (the
// §5.8 race) gets {} for a moment. A missing entry is ErrNoHistoryEntry,
// unless the WebSocket dropped since the end was read (drops): then
// ComfyUI restarted and took its history with it, ErrPromptLost alone, and
// the prompt is worth running again.
func (c *Client) historyAfterEnd(ctx context.Context, id string, drops uint64) (*HistoryEntry, error) {
	deadline := time.Now().Add(historyRetryBudget)
	delay := 20 * time.Millisecond
	for {
		entry, ok, err := c.History(ctx, id)
		if err != nil {
			return nil, err
		}
		if ok {
			return entry, nil
		}
		if time.Now().After(deadline) {
			c.mu.Lock()
			restarted := c.drops != drops || c.state != stateConnected
			c.mu.Unlock()
			if restarted {
				return nil, fmt.Errorf("not in history after execution, and the WebSocket dropped meanwhile (ComfyUI restarted?): %w", ErrPromptLost)
			}
			return nil, fmt.Errorf("not found in history after execution: %w: %w", ErrNoHistoryEntry, ErrPromptLost)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		delay = min(delay*2, 400*time.Millisecond)
	}
}

type reconState int

const (
	reconWaiting reconState = iota // running or pending: keep waiting
	reconDone                      // in history
	reconLost                      // in neither
)

// reconcile asks ComfyUI where the prompt is: history (done), queue
// (running or pending), or neither (lost). History is read again after the
// queue, since a prompt leaves the queue only once its entry is written.
func (c *Client) reconcile(ctx context.Context, id string) (*HistoryEntry, reconState, error) {
	entry, ok, err := c.History(ctx, id)
	if err != nil || ok {
		return entry, reconDone, err
	}
	q, err := c.Queue(ctx)
	if err != nil {
		return nil, reconWaiting, err
	}
	if q.IsRunning(id) || q.IsPending(id) {
		return nil, reconWaiting, nil
	}
	entry, ok, err = c.History(ctx, id)
	switch {
	case err != nil:
		return nil, reconWaiting, err
	case ok:
		return entry, reconDone, nil
	}
	return nil, reconLost, nil
}

func (c *Client) lostError(w *waiter) error {
	w.mu.Lock()
	removed := w.removed
	w.mu.Unlock()
	if removed {
		return &InterruptedError{PromptID: w.id, Removed: true}
	}
	return fmt.Errorf("neither in history nor in the queue (ComfyUI restarted?): %w", ErrPromptLost)
}

func (c *Client) isDown() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state == stateDown
}

func (c *Client) unregister(w *waiter) {
	c.mu.Lock()
	if c.waiters[w.id] == w {
		delete(c.waiters, w.id)
	}
	c.mu.Unlock()
}

// evKind is the kind of an event delivered to a waiter.
type evKind int

const (
	evProgress  evKind = iota // progress reports
	evPreview                 // a preview image
	evOutcome                 // execution_success / _error / _interrupted
	evDone                    // executing with node null: the prompt ended
	evReconcile               // reconnected, or removed from the queue: ask ComfyUI
	evFail                    // the client closed or ComfyUI became unreachable
)

type event struct {
	kind     evKind
	progress []Progress
	preview  Preview
	msg      *message
	err      error
	drops    uint64 // evDone: the client's drop count when the end was read
}

// waiter is one prompt being followed. The WebSocket loop pushes events to
// it without ever blocking; Wait drains them.
type waiter struct {
	opts RunOptions

	// Guarded by Client.mu.
	id         string
	active     bool // a Wait is following it
	rekeyed    bool // the server chose another id: reconcile first
	nodeErrors []NodeError

	mu       sync.Mutex
	events   []event
	previews int  // previews among events
	removed  bool // deleted from the queue by this client
	notify   chan struct{}
}

func newWaiter(id string, opts RunOptions) *waiter {
	return &waiter{id: id, opts: opts, notify: make(chan struct{}, 1)}
}

func (w *waiter) push(ev event) {
	w.mu.Lock()
	switch {
	case ev.kind == evPreview && w.previews >= maxQueuedPreviews,
		ev.kind == evProgress && len(w.events) >= maxQueuedProgress:
		// Nobody is draining fast enough (or at all): progress and
		// previews are lossy, the other events are never dropped.
		w.mu.Unlock()
		return
	case ev.kind == evPreview:
		w.previews++
	}
	w.events = append(w.events, ev)
	w.mu.Unlock()
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

func (w *waiter) drain() []event {
	w.mu.Lock()
	defer w.mu.Unlock()
	evs := w.events
	w.events, w.previews = nil, 0
	return evs
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
