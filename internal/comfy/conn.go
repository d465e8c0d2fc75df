package comfy

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/zap"
)

// featureFlags is the handshake that turns type-1 previews into type-4
// previews carrying their prompt id (protocol §5.2).
var featureFlags = []byte(`{"type":"feature_flags","data":{"supports_preview_metadata":true}}`)

// dial opens the WebSocket, announces the feature flags and waits for the
// first status message: once it arrives ComfyUI has registered the socket
// under our client id, so the prompts posted next are routed to it.
// Errors match ErrUnavailable (or are ctx's).
func (c *Client) dial(ctx context.Context) (*websocket.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	d := websocket.Dialer{HandshakeTimeout: c.cfg.DialTimeout, ReadBufferSize: 64 << 10}
	// No Origin header: ComfyUI rejects a loopback request whose Origin
	// does not match its Host (§11.17); gorilla sends none unless asked.
	conn, resp, err := d.DialContext(dctx, c.wsURL, nil)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		terr := &transportError{method: "GET", path: "/ws", err: err}
		if resp != nil {
			return nil, fmt.Errorf("dial websocket: %w: %w (HTTP %d)", ErrUnavailable, terr, resp.StatusCode)
		}
		return nil, fmt.Errorf("dial websocket: %w: %w", ErrUnavailable, terr)
	}
	conn.SetReadLimit(wsReadLimit)
	// Unblock the reads below if ctx ends. stop runs before the deferred
	// cancel above, so the socket handed back is not closed by it.
	stop := context.AfterFunc(dctx, func() { _ = conn.Close() })
	defer stop()

	fail := func(op string, err error) (*websocket.Conn, error) {
		_ = conn.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, unavailable(op, err)
	}
	_ = conn.SetWriteDeadline(time.Now().Add(wsWriteTimeout))
	if err := conn.WriteMessage(websocket.TextMessage, featureFlags); err != nil {
		return fail("send feature flags", err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(c.cfg.DialTimeout))
	for {
		typ, data, err := conn.ReadMessage()
		if err != nil {
			return fail("wait for first status", err)
		}
		if typ == websocket.TextMessage {
			if m, err := decodeMessage(data); err == nil && m.Type == "status" {
				return conn, nil
			}
		}
		c.handleFrame(typ, data)
	}
}

// run owns the WebSocket until ctx ends: it serves the socket, and when it
// drops, closes it and redials with the same client id.
//
// Shutdown order: ctx is cancelled (Close or the Start context); serve's
// pinger sends a close frame and closes the socket, which ends the read;
// serve waits for the pinger; run fails the remaining waiters with
// ErrClosed and closes done.
func (c *Client) run(ctx context.Context, conn *websocket.Conn, done chan struct{}) {
	defer close(done)
	for {
		err := c.serve(ctx, conn)
		if ctx.Err() != nil {
			break
		}
		c.log.Warn("websocket dropped, reconnecting", zap.Error(err))
		c.mu.Lock()
		c.current = ""
		c.setStateLocked(stateReconnecting, unavailable("websocket dropped", err))
		c.mu.Unlock()
		conn = c.reconnect(ctx, err)
		if conn == nil {
			break
		}
		c.mu.Lock()
		c.setStateLocked(stateConnected, nil)
		c.mu.Unlock()
		c.log.Info("websocket reconnected")
		c.broadcast(event{kind: evReconcile})
	}
	c.mu.Lock()
	if c.state != stateClosed {
		c.setStateLocked(stateClosed, ErrClosed)
	}
	c.mu.Unlock()
	c.broadcast(event{kind: evFail, err: ErrClosed})
}

// serve reads frames until the socket fails or ctx ends, pinging it every
// PingInterval and extending the read deadline on every frame and pong. The
// socket is closed when serve returns.
func (c *Client) serve(ctx context.Context, conn *websocket.Conn) error {
	extend := func() { _ = conn.SetReadDeadline(time.Now().Add(c.cfg.ReadTimeout)) }
	extend()
	conn.SetPongHandler(func(string) error { extend(); return nil })

	readerDone := make(chan struct{})
	pingerDone := make(chan struct{})
	go func() {
		defer close(pingerDone)
		t := time.NewTicker(c.cfg.PingInterval)
		defer t.Stop()
		for {
			select {
			case <-readerDone:
				return
			case <-ctx.Done():
				msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
				_ = conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(100*time.Millisecond))
				_ = conn.Close()
				return
			case <-t.C:
				if err := conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(wsWriteTimeout)); err != nil {
					_ = conn.Close()
					return
				}
			}
		}
	}()

	var err error
	for {
		var typ int
		var data []byte
		typ, data, err = conn.ReadMessage()
		if err != nil {
			break
		}
		extend()
		c.handleFrame(typ, data)
	}
	close(readerDone)
	<-pingerDone
	// Close the old socket fully before a redial: ComfyUI's cleanup of an
	// old connection under the same client id can otherwise unregister the
	// new one (protocol §11.5).
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
	_ = conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(100*time.Millisecond))
	_ = conn.Close()
	return err
}

// reconnect redials with exponential backoff. After ReconnectAttempts
// failures it fails every waiter with ErrUnavailable, then keeps trying
// every MaxReconnectDelay, or at once when kicked. It returns nil when ctx
// ends.
func (c *Client) reconnect(ctx context.Context, cause error) *websocket.Conn {
	last := cause
	delay := c.cfg.ReconnectDelay
	down := false
	for attempt := 1; ; attempt++ {
		if !down && attempt > c.cfg.ReconnectAttempts {
			down = true
			err := unavailable(fmt.Sprintf("websocket: connection closed and failed to reconnect after %d attempts",
				c.cfg.ReconnectAttempts), last)
			c.log.Warn("comfyui unreachable", zap.Error(err))
			c.mu.Lock()
			c.setStateLocked(stateDown, err)
			c.mu.Unlock()
			c.broadcast(event{kind: evFail, err: err})
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		case <-c.kickChan(down):
			t.Stop()
		}
		conn, err := c.dial(ctx)
		if err == nil {
			return conn
		}
		if ctx.Err() != nil {
			return nil
		}
		last = err
		c.log.Debug("redial failed", zap.Int("attempt", attempt), zap.Error(err))
		if down {
			c.mu.Lock()
			c.setStateLocked(stateDown, unavailable("websocket: reconnect failed", err))
			c.mu.Unlock()
		}
		delay = min(delay*2, c.cfg.MaxReconnectDelay)
	}
}

// kickChan is the kick channel once the loop is down, nil before.
func (c *Client) kickChan(down bool) chan struct{} {
	if !down {
		return nil
	}
	return c.kick
}

// handleFrame routes one frame to the prompt it is about.
func (c *Client) handleFrame(typ int, data []byte) {
	switch typ {
	case websocket.TextMessage:
		m, err := decodeMessage(data)
		if err != nil {
			c.log.Debug("undecodable websocket message", zap.Error(err))
			return
		}
		c.route(m)
	case websocket.BinaryMessage:
		p, ok := decodePreview(data)
		if !ok {
			return
		}
		c.mu.Lock()
		if p.PromptID == "" {
			p.PromptID = c.current
		}
		w := c.waiters[p.PromptID]
		c.mu.Unlock()
		if w != nil && w.opts.OnPreview != nil {
			w.push(event{kind: evPreview, preview: p})
		}
	}
}

// route delivers a decoded message to its waiter; messages without a
// prompt id or for prompts nobody waits on are dropped.
func (c *Client) route(m message) {
	if m.PromptID == "" {
		return
	}
	c.mu.Lock()
	w := c.waiters[m.PromptID]
	if w != nil {
		switch {
		case m.Type == "execution_start" || (m.Type == "executing" && !m.Finished):
			c.current = m.PromptID
		case m.Finished && c.current == m.PromptID:
			c.current = ""
		}
	}
	drops := c.drops
	c.mu.Unlock()
	if w == nil {
		return
	}
	switch {
	case m.Finished:
		w.push(event{kind: evDone, drops: drops})
	case m.Outcome != outcomeNone:
		w.push(event{kind: evOutcome, msg: &m})
	case len(m.Progress) > 0 && w.opts.OnProgress != nil:
		w.push(event{kind: evProgress, progress: m.Progress})
	}
}

// broadcast pushes ev to every waiter.
func (c *Client) broadcast(ev event) {
	c.mu.Lock()
	ws := make([]*waiter, 0, len(c.waiters))
	for _, w := range c.waiters {
		ws = append(ws, w)
	}
	c.mu.Unlock()
	for _, w := range ws {
		w.push(ev)
	}
}

// errIsUnavailable reports whether err says ComfyUI could not be reached.
func errIsUnavailable(err error) bool { return errors.Is(err, ErrUnavailable) }
