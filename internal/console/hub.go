package console

import (
	"bytes"
	"encoding/json"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/fleet"
	"github.com/comfyfleet/comfyfleet/proto"
)

// hub fans the fleet view and the jobs' events out to the browsers' event
// streams. Each browser has a buffer of frames; one that is full when a
// frame comes is dropped (its stream ends; the page reconnects and
// starts from a fresh snapshot), so a slow browser never holds the
// others or grows memory.
type hub struct {
	buffer int
	log    *zap.Logger
	nudged chan struct{} // read the fleet view now

	mu      sync.Mutex
	clients map[*client]struct{}
	last    []byte // the last fleet frame sent
	closed  bool
}

// client is one browser's event stream.
type client struct {
	frames chan []byte
	// job is the job whose previews the browser shows ("" none).
	job  string
	gone chan struct{} // closed when dropped
	once sync.Once
}

func (c *client) drop() { c.once.Do(func() { close(c.gone) }) }

func newHub(buffer int, log *zap.Logger) *hub {
	return &hub{buffer: buffer, log: log, nudged: make(chan struct{}, 1), clients: map[*client]struct{}{}}
}

// add registers a browser; ok is false once the hub is closed. The
// browser's first frame is the last fleet view, if any.
func (h *hub) add(job string) (c *client, ok bool) {
	c = &client{frames: make(chan []byte, h.buffer), job: job, gone: make(chan struct{})}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, false
	}
	h.clients[c] = struct{}{}
	if h.last != nil {
		c.frames <- h.last
	}
	h.nudge()
	return c, true
}

func (h *hub) remove(c *client) {
	h.mu.Lock()
	delete(h.clients, c)
	h.mu.Unlock()
	c.drop()
}

// nudge asks the fleet reader for a fresh view now.
func (h *hub) nudge() {
	select {
	case h.nudged <- struct{}{}:
	default:
	}
}

func (h *hub) watchers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.clients)
}

// close drops every browser and refuses new ones.
func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for c := range h.clients {
		delete(h.clients, c)
		c.drop()
	}
}

// send queues a frame for the browsers that want it (job "" for all,
// else those showing that job); a browser whose buffer is full is
// dropped.
func (h *hub) send(frame []byte, job string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.clients {
		if job != "" && c.job != job {
			continue
		}
		select {
		case c.frames <- frame:
		default:
			h.log.Info("dropping a browser's event stream: it fell behind", zap.Int("buffer", h.buffer))
			delete(h.clients, c)
			c.drop()
		}
	}
}

// fleet sends the fleet view when it changed.
func (h *hub) fleet(v *fleet.View) {
	data, err := json.Marshal(v)
	if err != nil {
		return
	}
	frame := sseFrame("fleet", data)
	h.mu.Lock()
	same := bytes.Equal(frame, h.last)
	h.last = frame
	h.mu.Unlock()
	if !same {
		h.send(frame, "")
	}
}

// jobEvent is what a browser gets of a job's event: everything but the
// stream chunks' output and the previews' pictures.
type jobEvent struct {
	JobID    string          `json:"job_id"`
	Tenant   string          `json:"tenant,omitempty"`
	Type     proto.EventType `json:"type"`
	Time     time.Time       `json:"time"`
	Attempt  int             `json:"attempt,omitempty"`
	WorkerID string          `json:"worker_id,omitempty"`
	Status   proto.Status    `json:"status,omitempty"`
	Error    string          `json:"error,omitempty"`
	Progress *proto.Progress `json:"progress,omitempty"`
}

// event is the subscription's handler: every status and progress event
// goes to every browser; a preview only to the browsers showing its job.
func (h *hub) event(ev *proto.Event) {
	if ev.Type == proto.EventPreview {
		if ev.Preview == nil {
			return
		}
		data, err := json.Marshal(map[string]any{"job_id": ev.JobID, "mime": ev.Preview.Mime, "data": ev.Preview.Data})
		if err == nil {
			h.send(sseFrame("preview", data), ev.JobID)
		}
		return
	}
	if ev.Type != proto.EventStatus && ev.Type != proto.EventProgress {
		return
	}
	data, err := json.Marshal(jobEvent{JobID: ev.JobID, Tenant: ev.Tenant, Type: ev.Type, Time: ev.Time, Attempt: ev.Attempt,
		WorkerID: ev.WorkerID, Status: ev.Status, Error: ev.Error, Progress: ev.Progress})
	if err == nil {
		h.send(sseFrame("job", data), "")
	}
}

// sseFrame is one server-sent event; data is one line of JSON.
func sseFrame(event string, data []byte) []byte {
	b := make([]byte, 0, len(event)+len(data)+16)
	b = append(b, "event: "...)
	b = append(b, event...)
	b = append(b, "\ndata: "...)
	b = append(b, data...)
	return append(b, "\n\n"...)
}
