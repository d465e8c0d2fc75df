package comfysim

import (
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
)

// hub is PromptServer.sockets and sockets_metadata: the registry of WebSocket
// connections by sid, and the fan-out of messages to them. Every send is
// atomic across sockets, so all sockets see messages in one global order, as
// with ComfyUI's single publish queue.
type hub struct {
	log *zap.Logger

	mu      sync.Mutex
	sockets map[string]*wsConn       // the registry: sid -> socket
	meta    map[string]*pyvalue.Dict // sockets_metadata[sid]["feature_flags"]
	open    map[*wsConn]struct{}
	wg      sync.WaitGroup // one per connection handler
}

// wsConn is one WebSocket connection with an unbounded outgoing queue drained
// by its own writer goroutine, so a slow client never blocks the executor.
type wsConn struct {
	sid string
	c   *websocket.Conn

	mu     sync.Mutex
	cond   *sync.Cond
	q      []wsFrame
	closed bool
	done   chan struct{} // closed when the writer goroutine has returned
	exited chan struct{} // closed when the connection handler has returned
}

type wsFrame struct {
	binary bool
	data   []byte
	close  bool // write a close frame, then stop
}

// wsWriteTimeout bounds one frame write so a dead peer cannot pin a writer.
const wsWriteTimeout = 30 * time.Second

// wsMaxMessage is aiohttp's default max_msg_size for client messages.
const wsMaxMessage = 4 << 20

func newHub(log *zap.Logger) *hub {
	return &hub{
		log:     log,
		sockets: map[string]*wsConn{},
		meta:    map[string]*pyvalue.Dict{},
		open:    map[*wsConn]struct{}{},
	}
}

func newWSConn(sid string, c *websocket.Conn) *wsConn {
	w := &wsConn{sid: sid, c: c, done: make(chan struct{}), exited: make(chan struct{})}
	w.cond = sync.NewCond(&w.mu)
	go w.writeLoop()
	return w
}

func (w *wsConn) enqueue(f wsFrame) {
	w.mu.Lock()
	if !w.closed {
		w.q = append(w.q, f)
		w.cond.Signal()
	}
	w.mu.Unlock()
}

func (w *wsConn) writeLoop() {
	defer close(w.done)
	for {
		w.mu.Lock()
		for len(w.q) == 0 && !w.closed {
			w.cond.Wait()
		}
		if len(w.q) == 0 {
			w.mu.Unlock()
			return
		}
		f := w.q[0]
		w.q[0] = wsFrame{}
		w.q = w.q[1:]
		w.mu.Unlock()

		_ = w.c.SetWriteDeadline(time.Now().Add(wsWriteTimeout))
		var err error
		switch {
		case f.close:
			_ = w.c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, ""))
			_ = w.c.NetConn().Close()
			w.stop()
			return
		case f.binary:
			err = w.c.WriteMessage(websocket.BinaryMessage, f.data)
		default:
			err = w.c.WriteMessage(websocket.TextMessage, f.data)
		}
		if err != nil {
			// aiohttp logs send errors and carries on; the reader will see
			// the broken connection and unregister the socket.
			_ = w.c.NetConn().Close()
			w.stop()
			return
		}
	}
}

// stop discards the queue and lets the writer return.
func (w *wsConn) stop() {
	w.mu.Lock()
	w.closed = true
	w.q = nil
	w.cond.Broadcast()
	w.mu.Unlock()
}

// register adds a new connection under sid, replacing (not closing) any
// socket registered under the same sid, as ComfyUI does.
func (h *hub) register(w *wsConn) {
	h.sockets[w.sid] = w
	h.meta[w.sid] = pyvalue.NewDict()
	h.open[w] = struct{}{}
}

// unregister is the handler's finally block: sockets.pop(sid) and
// sockets_metadata.pop(sid). Like ComfyUI it pops by sid, so a stale handler
// exiting late removes a newer socket registered under the same sid.
func (h *hub) unregister(w *wsConn) {
	h.mu.Lock()
	delete(h.sockets, w.sid)
	delete(h.meta, w.sid)
	delete(h.open, w)
	h.mu.Unlock()
}

// target says who receives a message: everyone, or the socket of one sid.
// A client id that is not a string matches no socket.
type target struct {
	broadcast bool
	sid       string
	valid     bool // sid is a string that may match a socket
}

var broadcastTarget = target{broadcast: true}

// targetFor is send_sync's sid argument for a prompt's client_id.
func targetFor(clientID any) target {
	if clientID == nil {
		return broadcastTarget
	}
	if s, ok := clientID.(string); ok {
		return target{sid: s, valid: true}
	}
	return target{}
}

func (h *hub) sendLocked(t target, f wsFrame) {
	if t.broadcast {
		for _, w := range h.sockets {
			w.enqueue(f)
		}
		return
	}
	if !t.valid {
		return
	}
	if w, ok := h.sockets[t.sid]; ok {
		w.enqueue(f)
	}
}

// sendJSON sends {"type": event, "data": data}; nothing is encoded when
// nobody would receive it.
func (h *hub) sendJSON(t target, event string, data any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.hasRecipientLocked(t) {
		return
	}
	h.sendLocked(t, wsFrame{data: pyvalue.Encode(pyvalue.NewDict("type", event, "data", data))})
}

func (h *hub) hasRecipientLocked(t target) bool {
	if t.broadcast {
		return len(h.sockets) > 0
	}
	if !t.valid {
		return false
	}
	_, ok := h.sockets[t.sid]
	return ok
}

// sendBinary sends a binary frame (already carrying its 4-byte event type).
func (h *hub) sendBinary(t target, frame []byte) {
	h.mu.Lock()
	h.sendLocked(t, wsFrame{binary: true, data: frame})
	h.mu.Unlock()
}

// supportsFeature is feature_flags.supports_feature: the flag must be JSON true.
func (h *hub) supportsFeature(clientID any, flag string) bool {
	sid, ok := clientID.(string)
	if !ok {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	m, ok := h.meta[sid]
	if !ok {
		return false
	}
	v, _ := m.Get(flag)
	b, isBool := v.(bool)
	return isBool && b
}

func (h *hub) setFeatureFlags(w *wsConn, flags *pyvalue.Dict) {
	h.mu.Lock()
	if _, ok := h.meta[w.sid]; ok {
		h.meta[w.sid] = flags
	}
	h.mu.Unlock()
}

func (h *hub) openCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.open)
}

// dropAll closes every connection at once, without a close frame, like a
// network failure or a killed process, and waits (up to a few seconds) for
// their handlers to unregister them, so that no stale handler is left to
// unregister a socket that reconnects afterwards.
func (h *hub) dropAll() int {
	h.mu.Lock()
	conns := make([]*wsConn, 0, len(h.open))
	for w := range h.open {
		conns = append(conns, w)
	}
	h.mu.Unlock()
	for _, w := range conns {
		_ = w.c.NetConn().Close()
		w.stop()
	}
	expired := make(chan struct{})
	t := time.AfterFunc(5*time.Second, func() { close(expired) })
	defer t.Stop()
	for _, w := range conns {
		select {
		case <-w.exited:
		case <-expired:
		}
	}
	return len(conns)
}

// closeAll closes every connection (gracefully with a close frame, or not)
// and waits for their handlers to return.
func (h *hub) closeAll(graceful bool) {
	if graceful {
		h.mu.Lock()
		for w := range h.open {
			w.enqueue(wsFrame{close: true})
		}
		h.mu.Unlock()
		// Give writers a moment to flush the close frame, then cut.
		h.mu.Lock()
		conns := make([]*wsConn, 0, len(h.open))
		for w := range h.open {
			conns = append(conns, w)
		}
		h.mu.Unlock()
		expired := make(chan struct{})
		t := time.AfterFunc(time.Second, func() { close(expired) })
		defer t.Stop()
		for _, w := range conns {
			select {
			case <-w.done:
			case <-expired:
			}
		}
	}
	h.dropAll()
	h.wg.Wait()
}
