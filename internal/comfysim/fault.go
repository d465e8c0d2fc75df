package comfysim

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// Fault describes injected misbehaviour. Real ComfyUI has no such thing; the
// worker never talks to this surface, tests and the dev stack do. The zero
// value injects nothing.
type Fault struct {
	// FailClass makes executions of this node class raise an exception after
	// their "executing" message, producing execution_error.
	FailClass string `json:"fail_class,omitempty"`
	// FailMessage is str(exception); default "emulated failure in <class>"
	// (or a CUDA OOM text with FailOOM).
	FailMessage string `json:"fail_message,omitempty"`
	// FailType is the exception's full type name; default "RuntimeError".
	FailType string `json:"fail_type,omitempty"`
	// FailOOM raises torch.OutOfMemoryError, with ComfyUI's OOM tips appended
	// to exception_message.
	FailOOM bool `json:"fail_oom,omitempty"`
	// FailTimes limits the failure to the next N executions of FailClass,
	// after which it clears itself; 0 fails every time.
	FailTimes int `json:"fail_times,omitempty"`
	// FailAtStep makes a FailClass KSampler raise when it reaches this step
	// instead of at node start.
	FailAtStep int `json:"fail_at_step,omitempty"`

	// HistoryDelay delays every GET /history and /history/{id} answer.
	HistoryDelay time.Duration `json:"history_delay,omitempty"`

	// DropWebSocketsAtStep drops every socket once when a KSampler reaches
	// this step (the prompt keeps running).
	DropWebSocketsAtStep int `json:"drop_websockets_at_step,omitempty"`
	// RestartAtStep restarts the emulated process when a KSampler reaches
	// this step: the prompt dies mid-run without a history entry.
	RestartAtStep int `json:"restart_at_step,omitempty"`
	// HangAtStep makes a KSampler stop making progress at this step until
	// it is interrupted, the process restarts, or the fault is cleared.
	HangAtStep int `json:"hang_at_step,omitempty"`

	// DownStatus is the HTTP status answered while SetDown(true); 0 closes
	// each connection without an answer (like a dead process).
	DownStatus int `json:"down_status,omitempty"`

	// UploadStatus refuses uploads: POST /upload/image answers this status
	// (a plain-text page, as aiohttp's) and stores nothing. 0 accepts them.
	UploadStatus int `json:"upload_status,omitempty"`
	// PromptStatus makes POST /prompt answer this status with aiohttp's
	// plain-text page and queue nothing (a 500 is what ComfyUI answers to a
	// body it cannot handle). 0 answers normally.
	PromptStatus int `json:"prompt_status,omitempty"`
	// PromptWithoutID queues the prompt but leaves prompt_id out of the 200
	// answer, as a broken proxy or fork might.
	PromptWithoutID bool `json:"prompt_without_id,omitempty"`
	// DropHistory writes no history entry for prompts that finish while it
	// is set, as if the entry had been evicted at once; the WebSocket
	// messages, executing null included, are still sent.
	DropHistory bool `json:"drop_history,omitempty"`
	// ViewNotFound makes GET /view answer 404 for these file names.
	ViewNotFound []string `json:"view_not_found,omitempty"`
	// PadOutputsTo extends every file a node saves to at least this many
	// bytes (a sparse tail of zeros), emulating a very large output such as
	// a long video without rendering it. Decoders ignore the tail.
	PadOutputsTo int64 `json:"pad_outputs_to,omitempty"`
}

// SetFault replaces the injected fault; SetFault(Fault{}) clears it.
func (s *Server) SetFault(f Fault) {
	s.mu.Lock()
	s.fault = f
	s.faultUses = 0
	s.mu.Unlock()
	s.wakeSampler()
	s.log.Info("fault set", zap.Any("fault", f))
}

// Fault returns the injected fault.
func (s *Server) Fault() Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fault
}

// SetDown makes the HTTP API and WebSocket unreachable (true) or reachable
// again (false). Going down drops every socket. The executor keeps running,
// as with a network partition; combine with Restart for a crashed process.
func (s *Server) SetDown(down bool) {
	was := s.down.Swap(down)
	if down && !was {
		s.hub.dropAll()
	}
	if was != down {
		s.log.Info("down state changed", zap.Bool("down", down))
	}
}

// DropWebSockets closes every WebSocket at once without a close frame and
// returns how many were open.
func (s *Server) DropWebSockets() int {
	s.stats.socketDrops.Add(1)
	n := s.hub.dropAll()
	s.log.Info("websockets dropped", zap.Int("count", n))
	return n
}

// Restart emulates a process restart: the queue, history, caches and the
// prompt counter are lost, temp/ is wiped, every socket is dropped, and the
// running prompt stops without writing history. Files in output/ and input/
// stay.
func (s *Server) Restart() {
	s.mu.Lock()
	s.epoch++
	running := s.running
	s.queue = nil
	s.running = nil
	s.history = newHistoryStore()
	s.number = 0
	s.freeMemory = false
	s.unload = false
	s.loaded = nil // a new process starts with empty VRAM
	s.interrupted = false
	s.clientID = nil
	s.lastNodeID = nil
	s.resetCachesLocked()
	s.mu.Unlock()
	s.wakeSampler()
	s.hub.dropAll()
	s.counters.reset()
	if err := resetDir(s.tempDir); err != nil {
		s.log.Warn("wipe temp on restart", zap.Error(err))
	}
	s.stats.restarts.Add(1)
	f := []zap.Field{}
	if running != nil {
		f = append(f, zap.String("killed_prompt_id", running.id))
	}
	s.log.Info("restarted", f...)
}

// controlFault is Fault in the control API's JSON, with durations as Go
// duration strings ("250ms") or integer milliseconds.
type controlFault struct {
	Fault
	HistoryDelay any `json:"history_delay,omitempty"`
}

func parseDuration(v any) (time.Duration, error) {
	switch t := v.(type) {
	case nil:
		return 0, nil
	case string:
		return time.ParseDuration(t)
	case float64:
		return time.Duration(t * float64(time.Millisecond)), nil
	}
	return 0, fmt.Errorf("bad duration %v", v)
}

// ControlHandler returns the fault-injection API (JSON):
//
//	GET  /control/stats                  Stats
//	GET  /control/fault                  the current Fault
//	POST /control/fault   {Fault}        replace it ({} clears)
//	DELETE /control/fault                clear it
//	POST /control/drop-websockets        {"dropped": n}
//	POST /control/down    {"down": bool}
//	POST /control/restart
//	POST /control/step-delay {"step_delay": "10ms"}
//	POST /control/model-load-delay {"model_load_delay": "2s"}
//	GET  /control/uploads                the UploadRecords
//	GET  /control/prompts                the PromptRecords
func (s *Server) ControlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /control/stats", func(w http.ResponseWriter, _ *http.Request) {
		writeControl(w, http.StatusOK, s.Stats())
	})
	mux.HandleFunc("GET /control/uploads", func(w http.ResponseWriter, _ *http.Request) {
		writeControl(w, http.StatusOK, nonNilList(s.Uploads()))
	})
	mux.HandleFunc("GET /control/prompts", func(w http.ResponseWriter, _ *http.Request) {
		writeControl(w, http.StatusOK, nonNilList(s.Prompts()))
	})
	mux.HandleFunc("GET /control/fault", func(w http.ResponseWriter, _ *http.Request) {
		f := s.Fault()
		writeControl(w, http.StatusOK, controlFault{Fault: f, HistoryDelay: f.HistoryDelay.String()})
	})
	mux.HandleFunc("POST /control/fault", func(w http.ResponseWriter, r *http.Request) {
		var cf controlFault
		if err := decodeControl(r, &cf); err != nil {
			writeControl(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		d, err := parseDuration(cf.HistoryDelay)
		if err != nil {
			writeControl(w, http.StatusBadRequest, map[string]string{"error": "history_delay: " + err.Error()})
			return
		}
		cf.Fault.HistoryDelay = d
		s.SetFault(cf.Fault)
		writeControl(w, http.StatusOK, map[string]bool{"ok": true})
	})
	mux.HandleFunc("DELETE /control/fault", func(w http.ResponseWriter, _ *http.Request) {
		s.SetFault(Fault{})
		writeControl(w, http.StatusOK, map[string]bool{"ok": true})
	})
	mux.HandleFunc("POST /control/drop-websockets", func(w http.ResponseWriter, _ *http.Request) {
		writeControl(w, http.StatusOK, map[string]int{"dropped": s.DropWebSockets()})
	})
	mux.HandleFunc("POST /control/down", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Down *bool `json:"down"`
		}
		if err := decodeControl(r, &body); err != nil || body.Down == nil {
			writeControl(w, http.StatusBadRequest, map[string]string{"error": `body must be {"down": true|false}`})
			return
		}
		s.SetDown(*body.Down)
		writeControl(w, http.StatusOK, map[string]bool{"down": *body.Down})
	})
	mux.HandleFunc("POST /control/restart", func(w http.ResponseWriter, _ *http.Request) {
		s.Restart()
		writeControl(w, http.StatusOK, map[string]bool{"ok": true})
	})
	mux.HandleFunc("POST /control/step-delay", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			StepDelay any `json:"step_delay"`
		}
		if err := decodeControl(r, &body); err != nil {
			writeControl(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		d, err := parseDuration(body.StepDelay)
		if err != nil {
			writeControl(w, http.StatusBadRequest, map[string]string{"error": "step_delay: " + err.Error()})
			return
		}
		s.SetStepDelay(d)
		writeControl(w, http.StatusOK, map[string]string{"step_delay": s.currentStepDelay().String()})
	})
	mux.HandleFunc("POST /control/model-load-delay", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			ModelLoadDelay any `json:"model_load_delay"`
		}
		if err := decodeControl(r, &body); err != nil {
			writeControl(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		d, err := parseDuration(body.ModelLoadDelay)
		if err != nil {
			writeControl(w, http.StatusBadRequest, map[string]string{"error": "model_load_delay: " + err.Error()})
			return
		}
		s.SetModelLoadDelay(d)
		writeControl(w, http.StatusOK, map[string]string{"model_load_delay": s.currentLoadDelay().String()})
	})
	return mux
}

func nonNilList[T any](l []T) []T {
	if l == nil {
		return []T{}
	}
	return l
}

func decodeControl(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil && err != io.EOF {
		return fmt.Errorf("decode body: %w", err)
	}
	return nil
}

func writeControl(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
