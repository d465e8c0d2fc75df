package comfysim

import (
	"net/http"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"
	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
)

var upgrader = websocket.Upgrader{
	// The origin-only middleware already ran; gorilla's own check is stricter
	// than ComfyUI's.
	CheckOrigin:       func(*http.Request) bool { return true },
	EnableCompression: true,
}

// handleWS is PromptServer.websocket_handler.
func (s *Server) handleWS(w http.ResponseWriter, r *http.Request, _ string) {
	sid := parsePyQuery(r.URL.RawQuery).first("clientId")
	c, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // gorilla has answered
	}
	if sid == "" {
		sid = uuidHex()
	}
	c.SetReadLimit(wsMaxMessage)
	conn := newWSConn(sid, c)

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = c.NetConn().Close()
		conn.stop()
		close(conn.exited)
		return
	}
	h := s.hub
	h.mu.Lock()
	h.register(conn)
	h.wg.Add(1)
	conn.enqueue(wsFrame{data: pyvalue.Encode(pyvalue.NewDict("type", "status", "data",
		pyvalue.NewDict("status", s.queueInfoLocked(), "sid", sid)))})
	if cid, ok := s.clientID.(string); ok && cid == sid && s.lastNodeID != nil {
		conn.enqueue(wsFrame{data: pyvalue.Encode(pyvalue.NewDict("type", "executing", "data", pyvalue.NewDict("node", s.lastNodeID)))})
	}
	h.mu.Unlock()
	s.mu.Unlock()
	s.log.Debug("websocket connected", zap.String("sid", sid))

	defer func() {
		h.unregister(conn)
		_ = c.NetConn().Close()
		conn.stop()
		<-conn.done
		close(conn.exited)
		h.wg.Done()
		s.log.Debug("websocket closed", zap.String("sid", sid))
	}()
	first := true
	for {
		typ, data, err := c.ReadMessage()
		if err != nil {
			return
		}
		if typ != websocket.TextMessage {
			continue
		}
		v, err := pyvalue.Decode(data)
		if err != nil {
			continue // logged as invalid JSON; still awaiting the first message
		}
		d, ok := v.(*pyvalue.Dict)
		if !ok {
			continue // data.get raised; first_message stays set
		}
		if first {
			if t, _ := d.Get("type"); t == "feature_flags" {
				flags, _ := d.Get("data")
				fd, ok := flags.(*pyvalue.Dict)
				if !ok {
					fd = pyvalue.NewDict()
				}
				h.setFeatureFlags(conn, fd)
				h.sendJSON(target{sid: sid, valid: true}, "feature_flags", serverFeatures())
			}
		}
		first = false
	}
}

func uuidHex() string {
	u := uuid.New()
	const hexd = "0123456789abcdef"
	b := make([]byte, 32)
	for i, x := range u {
		b[2*i] = hexd[x>>4]
		b[2*i+1] = hexd[x&0xf]
	}
	return string(b)
}
