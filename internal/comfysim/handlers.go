package comfysim

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
)

// route is one aiohttp route: a path with at most one {var} segment.
type route struct {
	method  string
	pattern string // "/history/{}" style; {} matches one non-empty segment
	h       func(w http.ResponseWriter, r *http.Request, arg string)
}

func (s *Server) routes() []route {
	rs := []route{
		{"GET", "/ws", s.handleWS},
		{"GET", "/prompt", s.handleGetPrompt},
		{"POST", "/prompt", s.handlePostPrompt},
		{"GET", "/queue", s.handleGetQueue},
		{"POST", "/queue", s.handlePostQueue},
		{"GET", "/history", s.handleGetHistory},
		{"POST", "/history", s.handlePostHistory},
		{"GET", "/history/{}", s.handleGetHistoryID},
		{"GET", "/view", noArg(s.handleView)},
		{"POST", "/upload/image", noArg(s.handleUploadImage)},
		{"POST", "/interrupt", s.handleInterrupt},
		{"POST", "/free", s.handleFree},
		{"GET", "/object_info", s.handleObjectInfo},
		{"GET", "/object_info/{}", s.handleObjectInfoClass},
		{"GET", "/system_stats", s.handleSystemStats},
		{"GET", "/features", s.handleFeatures},
		{"GET", "/models", s.handleModels},
		{"GET", "/models/{}", s.handleModelFolder},
		{"GET", "/embeddings", s.handleEmbeddings},
		{"GET", "/extensions", s.handleExtensions},
		{"GET", "/api/jobs", s.handleJobs},
		{"GET", "/api/jobs/{}", s.handleJob},
		{"POST", "/api/jobs/{}/cancel", s.handleJobCancel},
		{"POST", "/api/jobs/cancel", s.handleJobsCancel},
	}
	// Every route is also registered under /api (the /api/jobs routes thus
	// also answer as /api/api/jobs).
	n := len(rs)
	for _, r := range rs[:n] {
		rs = append(rs, route{r.method, "/api" + r.pattern, r.h})
	}
	return rs
}

func noArg(h http.HandlerFunc) func(http.ResponseWriter, *http.Request, string) {
	return func(w http.ResponseWriter, r *http.Request, _ string) { h(w, r) }
}

// match reports whether path matches pattern, returning the {} segment.
func match(pattern, path string) (string, bool) {
	pre, post, hasVar := strings.Cut(pattern, "{}")
	if !hasVar {
		return "", pattern == path
	}
	if !strings.HasPrefix(path, pre) || !strings.HasSuffix(path, post) || len(path) < len(pre)+len(post)+1 {
		return "", false
	}
	seg := path[len(pre) : len(path)-len(post)]
	if seg == "" || strings.ContainsAny(seg, "/{}") {
		return "", false
	}
	return seg, true
}

// apiHandler is the aiohttp application: the down fault, the origin-only
// middleware, the body-size limit, then routing.
func (s *Server) apiHandler() http.Handler {
	rs := s.routes()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.down.Load() {
			s.refuse(w)
			return
		}
		if !originAllowed(r) {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		if r.Method == http.MethodOptions {
			w.WriteHeader(http.StatusOK)
			return
		}
		if r.ContentLength > maxUploadSize {
			writeTooLarge(w, r)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxUploadSize)
		path := r.URL.Path
		if path == "/" {
			if r.Method != http.MethodGet && r.Method != http.MethodHead {
				writeMethodNotAllowed(w, "GET,HEAD")
				return
			}
			s.handleRoot(w, r)
			return
		}
		var allowed []string
		for _, rt := range rs {
			arg, ok := match(rt.pattern, path)
			if !ok {
				continue
			}
			if rt.method == r.Method || (rt.method == http.MethodGet && r.Method == http.MethodHead) {
				rt.h(w, r, arg)
				return
			}
			allowed = append(allowed, rt.method)
		}
		if len(allowed) > 0 {
			writeMethodNotAllowed(w, strings.Join(allowed, ","))
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, "404: Not Found")
	})
}

// refuse answers while the emulated process is down: the configured status,
// or a connection closed without a response.
func (s *Server) refuse(w http.ResponseWriter) {
	s.mu.Lock()
	status := s.fault.DownStatus
	s.mu.Unlock()
	if status != 0 {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(status)
		_, _ = fmt.Fprintf(w, "%d %s", status, http.StatusText(status))
		return
	}
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			if tc, ok := conn.(*net.TCPConn); ok {
				_ = tc.SetLinger(0) // RST, like a refused or killed peer
			}
			_ = conn.Close()
			return
		}
	}
	w.WriteHeader(http.StatusServiceUnavailable)
}

// originAllowed is create_origin_only_middleware.
func originAllowed(r *http.Request) bool {
	if r.Header.Get("Sec-Fetch-Site") == "cross-site" {
		return false
	}
	origin := r.Header.Get("Origin")
	if origin == "" || r.Host == "" {
		return true
	}
	o, err := url.Parse(origin)
	if err != nil {
		return true
	}
	hostURL, err := url.Parse("//" + strings.ToLower(r.Host))
	if err != nil {
		return true
	}
	hostDomain := strings.ToLower(r.Host)
	originDomain := strings.ToLower(o.Host)
	if o.Port() == "" {
		hostDomain = hostURL.Hostname()
	}
	if hostURL.Port() == "" {
		originDomain = strings.ToLower(o.Hostname())
	}
	if !isLoopback(hostURL.Hostname()) || hostDomain == "" || originDomain == "" {
		return true
	}
	return hostDomain == originDomain
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(strings.Trim(host, "[]"))
	return err == nil && a.IsLoopback()
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	writeJSONBytes(w, status, pyvalue.Encode(v))
}

func writeJSONBytes(w http.ResponseWriter, status int, b []byte) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// writeStatusPage answers status with aiohttp's plain-text page: the one for
// an unhandled exception on 500, "<status>: <reason>" otherwise.
func writeStatusPage(w http.ResponseWriter, status int) {
	if status == http.StatusInternalServerError {
		writeServerError(w)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, "%d: %s", status, http.StatusText(status))
}

// writeServerError is aiohttp's page for an unhandled exception.
func writeServerError(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	_, _ = io.WriteString(w, "500 Internal Server Error\n\nServer got itself in trouble")
}

func writeMethodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusMethodNotAllowed)
	_, _ = io.WriteString(w, "405: Method Not Allowed")
}

func writeTooLarge(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusRequestEntityTooLarge)
	_, _ = fmt.Fprintf(w, "Maximum request body size %d exceeded, actual body size %d", maxUploadSize, max(r.ContentLength, maxUploadSize+1))
}

func isTooLarge(err error) bool {
	var mbe *http.MaxBytesError
	return errors.As(err, &mbe)
}

// readBodyRaw reads the body, answering 413/500 itself when it cannot.
func (s *Server) readBodyRaw(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		if isTooLarge(err) {
			writeTooLarge(w, r)
		} else {
			writeServerError(w)
		}
		return nil, false
	}
	return body, true
}

// readBodyJSON is `await request.json()`: ok is false when the handler must
// answer (500 for invalid JSON, 413 for an oversized body).
func (s *Server) readBodyJSON(w http.ResponseWriter, r *http.Request) (any, bool) {
	body, ok := s.readBodyRaw(w, r)
	if !ok {
		return nil, false
	}
	v, err := pyvalue.Decode(body)
	if err != nil {
		writeServerError(w)
		return nil, false
	}
	return v, true
}

const indexHTML = `<!DOCTYPE html>
<html lang="en">
<head><meta charset="UTF-8"><title>ComfyUI</title></head>
<body><div id="vue-app"></div><p>comfysim: a ComfyUI ` + ComfyUIVersion + ` API emulator (no frontend).</p></body>
</html>
`

func (s *Server) handleRoot(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html")
	w.Header().Set("Cache-Control", "no-store, must-revalidate")
	w.Header().Set("Pragma", "no-cache")
	w.Header().Set("Expires", "0")
	_, _ = io.WriteString(w, indexHTML)
}

// --- /prompt ---

func (s *Server) handleGetPrompt(w http.ResponseWriter, _ *http.Request, _ string) {
	s.mu.Lock()
	info := s.queueInfoLocked()
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, info)
}

var canonicalUUID = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// sensitiveKeys is execution.SENSITIVE_EXTRA_DATA_KEYS.
var sensitiveKeys = []string{"auth_token_comfy_org", "api_key_comfy_org"}

// bodyGet is json_data[key] after `key in json_data` succeeded: only a dict
// can be subscripted by a string.
func bodyGet(body any, key string) (any, error) {
	d, ok := body.(*pyvalue.Dict)
	if !ok {
		return nil, serverError("%s indices must be integers", pyvalue.TypeName(body))
	}
	v, _ := d.Get(key)
	return v, nil
}

func (s *Server) handlePostPrompt(w http.ResponseWriter, r *http.Request, _ string) {
	body, ok := s.readBodyJSON(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	refuse := s.fault.PromptStatus
	s.mu.Unlock()
	if refuse != 0 {
		writeStatusPage(w, refuse)
		return
	}
	status, resp, err := s.postPrompt(body, r.Header.Get("Comfy-Usage-Source"))
	if err != nil {
		s.log.Debug("POST /prompt failed", zap.Error(err))
		writeServerError(w)
		return
	}
	writeJSON(w, status, resp)
}

// postPrompt is the body of server.post_prompt. An error means a 500.
func (s *Server) postPrompt(body any, usageSource string) (int, *pyvalue.Dict, error) {
	hasNumber, err := pyvalue.Contains(body, "number")
	if err != nil {
		return 0, nil, serverError("%v", err)
	}
	var number any
	if hasNumber {
		nv, err := bodyGet(body, "number")
		if err != nil {
			return 0, nil, err
		}
		f, err := pyvalue.Float(nv)
		if err != nil {
			return 0, nil, serverError("%v", err)
		}
		number = f
	} else {
		s.mu.Lock()
		n := s.number
		s.number++
		s.mu.Unlock()
		number = n
		hasFront, err := pyvalue.Contains(body, "front")
		if err != nil {
			return 0, nil, serverError("%v", err)
		}
		if hasFront {
			fv, err := bodyGet(body, "front")
			if err != nil {
				return 0, nil, err
			}
			if pyvalue.Truth(fv) {
				number = -n
			}
		}
	}
	hasPrompt, err := pyvalue.Contains(body, "prompt")
	if err != nil {
		return 0, nil, serverError("%v", err)
	}
	if !hasPrompt {
		return http.StatusBadRequest, pyvalue.NewDict("error", reason("no_prompt", "No prompt provided", "No prompt provided", nil), "node_errors", pyvalue.NewDict()), nil
	}
	d, isDict := body.(*pyvalue.Dict)
	if !isDict {
		return 0, nil, serverError("%s indices must be integers", pyvalue.TypeName(body))
	}
	promptV, _ := d.Get("prompt")
	promptID := ""
	if pid, _ := d.Get("prompt_id"); pid != nil {
		ps, isStr := pid.(string)
		if !isStr || !canonicalUUID.MatchString(ps) {
			return http.StatusBadRequest, pyvalue.NewDict("error", reason("invalid_prompt_id", "prompt_id must be a valid UUID",
				"prompt_id must be a UUID string in canonical lowercase hyphenated form; omit it to let the server generate one", nil),
				"node_errors", pyvalue.NewDict()), nil
		}
		promptID = ps
	} else {
		promptID = uuid.NewString()
	}
	partial, hasPartial := d.Get("partial_execution_targets")
	if err := checkReplacements(promptV); err != nil {
		return 0, nil, err
	}
	prompt := promptV.(*pyvalue.Dict)
	valid, err := s.validatePrompt(prompt, partial, hasPartial)
	if err != nil {
		return 0, nil, err
	}

	var extra any = pyvalue.NewDict()
	if ev, has := d.Get("extra_data"); has {
		extra = ev
	}
	if cid, has := d.Get("client_id"); has {
		ed, ok := extra.(*pyvalue.Dict)
		if !ok {
			return 0, nil, serverError("'%s' object does not support item assignment", pyvalue.TypeName(extra))
		}
		ed.Set("client_id", cid)
	}
	hasUsage, err := pyvalue.Contains(extra, "comfy_usage_source")
	if err != nil {
		return 0, nil, serverError("%v", err)
	}
	if !hasUsage && usageSource != "" {
		ed, ok := extra.(*pyvalue.Dict)
		if !ok {
			return 0, nil, serverError("'%s' object does not support item assignment", pyvalue.TypeName(extra))
		}
		ed.Set("comfy_usage_source", usageSource)
	}
	if !valid.ok {
		ne := valid.nodeErrors
		if ne == nil {
			ne = pyvalue.NewDict()
		}
		return http.StatusBadRequest, pyvalue.NewDict("error", valid.err, "node_errors", ne), nil
	}
	sensitive := pyvalue.NewDict()
	for _, k := range sensitiveKeys {
		in, err := pyvalue.Contains(extra, k)
		if err != nil {
			return 0, nil, serverError("%v", err)
		}
		if in {
			ed, ok := extra.(*pyvalue.Dict)
			if !ok {
				return 0, nil, serverError("pop on %s", pyvalue.TypeName(extra))
			}
			v, _ := ed.Get(k)
			ed.Delete(k)
			sensitive.Set(k, v)
		}
	}
	ed, ok := extra.(*pyvalue.Dict)
	if !ok {
		return 0, nil, serverError("'%s' object does not support item assignment", pyvalue.TypeName(extra))
	}
	ed.Set("create_time", nowMillis())
	item := &queueItem{number: number, id: promptID, prompt: prompt, extra: ed, outputs: valid.good, sensitive: sensitive}

	received := ed.Copy()
	for _, k := range sensitive.Keys() {
		v, _ := sensitive.Get(k)
		received.Set(k, v)
	}
	cidStr, _ := received.Get("client_id")
	cidText, _ := cidStr.(string)

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return 0, nil, serverError("server closed")
	}
	s.seq++
	item.seq = s.seq
	s.queue.push(item)
	s.recordPromptLocked(PromptRecord{PromptID: promptID, ClientID: cidText, ExtraData: pyvalue.Encode(received)})
	withoutID := s.fault.PromptWithoutID
	s.statusLocked()
	s.cond.Broadcast()
	s.mu.Unlock()
	s.stats.queued.Add(1)
	if withoutID {
		return http.StatusOK, pyvalue.NewDict("number", number, "node_errors", valid.nodeErrors), nil
	}
	return http.StatusOK, pyvalue.NewDict("prompt_id", promptID, "number", number, "node_errors", valid.nodeErrors), nil
}

// --- /queue ---

func (s *Server) handleGetQueue(w http.ResponseWriter, _ *http.Request, _ string) {
	s.mu.Lock()
	running := []any{}
	if s.running != nil {
		running = append(running, s.running.tuple())
	}
	pending := make([]any, 0, len(s.queue))
	for _, it := range s.queue {
		pending = append(pending, it.tuple())
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, pyvalue.NewDict("queue_running", running, "queue_pending", pending))
}

// pyIter returns the items `for x in v` yields, or a TypeError.
func pyIter(v any) ([]any, error) {
	switch t := v.(type) {
	case []any:
		return t, nil
	case *pyvalue.Dict:
		out := make([]any, 0, t.Len())
		for _, k := range t.Keys() {
			out = append(out, k)
		}
		return out, nil
	case string:
		out := []any{}
		for _, r := range t {
			out = append(out, string(r))
		}
		return out, nil
	}
	return nil, serverError("'%s' object is not iterable", pyvalue.TypeName(v))
}

func (s *Server) handlePostQueue(w http.ResponseWriter, r *http.Request, _ string) {
	body, ok := s.readBodyJSON(w, r)
	if !ok {
		return
	}
	if err := s.postQueue(body); err != nil {
		writeServerError(w)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (s *Server) postQueue(body any) error {
	hasClear, err := pyvalue.Contains(body, "clear")
	if err != nil {
		return err
	}
	if hasClear {
		v, err := bodyGet(body, "clear")
		if err != nil {
			return err
		}
		if pyvalue.Truth(v) {
			s.mu.Lock()
			s.queue = nil
			s.statusLocked()
			s.mu.Unlock()
		}
	}
	hasDelete, err := pyvalue.Contains(body, "delete")
	if err != nil {
		return err
	}
	if !hasDelete {
		return nil
	}
	v, err := bodyGet(body, "delete")
	if err != nil {
		return err
	}
	ids, err := pyIter(v)
	if err != nil {
		return err
	}
	for _, idV := range ids {
		id, isStr := idV.(string)
		if !isStr {
			continue
		}
		s.mu.Lock()
		for k, it := range s.queue {
			if it.id != id {
				continue
			}
			if len(s.queue) == 1 {
				s.queue = nil
				s.statusLocked() // wipe_queue
			} else {
				s.queue = append(s.queue[:k:k], s.queue[k+1:]...)
				s.queue.heapify()
			}
			s.statusLocked()
			break
		}
		s.mu.Unlock()
	}
	return nil
}

// --- /history ---

func (s *Server) historyDelay(r *http.Request) {
	s.mu.Lock()
	d := s.fault.HistoryDelay
	s.mu.Unlock()
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
	}
}

func (s *Server) handleGetHistory(w http.ResponseWriter, r *http.Request, _ string) {
	s.historyDelay(r)
	q := parsePyQuery(r.URL.RawQuery)
	maxItems, err := bigOrNil(q.get("max_items"))
	if err != nil {
		writeServerError(w)
		return
	}
	offset, err := bigOrNil(q.get("offset"))
	if err != nil {
		writeServerError(w)
		return
	}
	s.mu.Lock()
	entries := s.history.slice(maxItems, offset)
	s.mu.Unlock()
	var b []byte
	b = append(b, '{')
	for k, e := range entries {
		if k > 0 {
			b = append(b, ", "...)
		}
		b = pyvalue.AppendString(b, e.id)
		b = append(b, ": "...)
		b = append(b, e.json()...)
	}
	b = append(b, '}')
	writeJSONBytes(w, http.StatusOK, b)
}

func (s *Server) handleGetHistoryID(w http.ResponseWriter, r *http.Request, id string) {
	s.historyDelay(r)
	s.mu.Lock()
	e, ok := s.history.get(id)
	s.mu.Unlock()
	if !ok {
		writeJSONBytes(w, http.StatusOK, []byte("{}"))
		return
	}
	b := pyvalue.AppendString([]byte{'{'}, id)
	b = append(b, ": "...)
	b = append(b, e.json()...)
	b = append(b, '}')
	writeJSONBytes(w, http.StatusOK, b)
}

func (s *Server) handlePostHistory(w http.ResponseWriter, r *http.Request, _ string) {
	body, ok := s.readBodyJSON(w, r)
	if !ok {
		return
	}
	if err := s.postHistory(body); err != nil {
		writeServerError(w)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (s *Server) postHistory(body any) error {
	hasClear, err := pyvalue.Contains(body, "clear")
	if err != nil {
		return err
	}
	if hasClear {
		v, err := bodyGet(body, "clear")
		if err != nil {
			return err
		}
		if pyvalue.Truth(v) {
			s.mu.Lock()
			s.history.clear()
			s.mu.Unlock()
		}
	}
	hasDelete, err := pyvalue.Contains(body, "delete")
	if err != nil {
		return err
	}
	if !hasDelete {
		return nil
	}
	v, err := bodyGet(body, "delete")
	if err != nil {
		return err
	}
	ids, err := pyIter(v)
	if err != nil {
		return err
	}
	for _, idV := range ids {
		switch t := idV.(type) {
		case string:
			s.mu.Lock()
			s.history.delete(t)
			s.mu.Unlock()
		case []any, *pyvalue.Dict:
			return serverError("unhashable type")
		}
	}
	return nil
}

// --- /interrupt and /free ---

func (s *Server) handleInterrupt(w http.ResponseWriter, r *http.Request, _ string) {
	s.stats.interruptRequests.Add(1)
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		if isTooLarge(err) {
			writeTooLarge(w, r)
			return
		}
		writeServerError(w)
		return
	}
	var body any = pyvalue.NewDict()
	if v, perr := pyvalue.Decode(raw); perr == nil {
		body = v
	} else if !isUTF8(raw) {
		writeServerError(w) // UnicodeDecodeError is not a JSONDecodeError
		return
	}
	d, isDict := body.(*pyvalue.Dict)
	if !isDict {
		writeServerError(w) // json_data.get on a non-dict
		return
	}
	pid, _ := d.Get("prompt_id")
	s.mu.Lock()
	if pyvalue.Truth(pid) {
		if s.running != nil && pyvalue.Equal(s.running.id, pid) {
			s.interrupted = true
			s.log.Info("interrupting prompt", zap.String("prompt_id", s.running.id))
		}
	} else {
		s.interrupted = true
	}
	s.mu.Unlock()
	s.wakeSampler()
	w.WriteHeader(http.StatusOK)
}

func (s *Server) handleFree(w http.ResponseWriter, r *http.Request, _ string) {
	s.stats.freeRequests.Add(1)
	body, ok := s.readBodyJSON(w, r)
	if !ok {
		return
	}
	d, isDict := body.(*pyvalue.Dict)
	if !isDict {
		writeServerError(w)
		return
	}
	// Each flag is set only when true; prompt_worker unloads the models
	// on unload_models, or on free_memory alone (flags.get("unload_models",
	// free_memory)).
	fm, _ := d.Get("free_memory")
	um, _ := d.Get("unload_models")
	if pyvalue.Truth(fm) || pyvalue.Truth(um) {
		s.mu.Lock()
		s.freeMemory = s.freeMemory || pyvalue.Truth(fm)
		s.unload = true
		s.cond.Broadcast()
		s.mu.Unlock()
	}
	w.WriteHeader(http.StatusOK)
}

// --- introspection ---

func (s *Server) handleObjectInfo(w http.ResponseWriter, _ *http.Request, _ string) {
	writeJSON(w, http.StatusOK, s.nodes.ObjectInfo(s.host))
}

func (s *Server) handleObjectInfoClass(w http.ResponseWriter, _ *http.Request, class string) {
	out := pyvalue.NewDict()
	if d := s.nodes.Class(class); d != nil {
		out.Set(class, d.ObjectInfo(s.host))
	}
	writeJSON(w, http.StatusOK, out)
}

// memInfo reads total and available RAM from /proc/meminfo.
func memInfo() (total, free int64) {
	total, free = 16<<30, 12<<30
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return total, free
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "MemTotal:":
			total = n * 1024
		case "MemAvailable:":
			free = n * 1024
		}
	}
	return total, free
}

func (s *Server) handleSystemStats(w http.ResponseWriter, _ *http.Request, _ string) {
	total, free := memInfo()
	writeJSON(w, http.StatusOK, pyvalue.NewDict(
		"system", pyvalue.NewDict(
			"os", "linux",
			"ram_total", total,
			"ram_free", free,
			"comfyui_version", ComfyUIVersion,
			"required_frontend_version", "1.45.20",
			"installed_templates_version", "0.11.2",
			"required_templates_version", "0.11.2",
			"comfy_package_versions", []any{pyvalue.NewDict("name", "comfyui-frontend-package", "installed", "1.45.20", "required", "1.45.20")},
			"python_version", "3.12.10 (main, Apr  9 2025, 04:44:59) [GCC 14.2.0]",
			"pytorch_version", "2.9.1+cpu",
			"embedded_python", false,
			"deploy_environment", "local-git",
			"argv", []string{"main.py", "--cpu"},
		),
		"devices", []any{pyvalue.NewDict(
			"name", "cpu", "type", "cpu", "index", nil,
			"vram_total", total, "vram_free", free,
			"torch_vram_total", total, "torch_vram_free", free,
		)},
	))
}

// serverFeatures is feature_flags.get_server_features() with default args.
func serverFeatures() *pyvalue.Dict {
	return pyvalue.NewDict(
		"supports_preview_metadata", true,
		"max_upload_size", int64(maxUploadSize),
		"extension", pyvalue.NewDict("manager", pyvalue.NewDict("supports_v4", true)),
		"node_replacements", true,
		"assets", false,
	)
}

func (s *Server) handleFeatures(w http.ResponseWriter, _ *http.Request, _ string) {
	writeJSON(w, http.StatusOK, serverFeatures())
}

var modelFolders = []string{"checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
	"style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen", "upscale_models",
	"latent_upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers", "model_patches",
	"audio_encoders", "background_removal", "frame_interpolation", "geometry_estimation", "optical_flow", "detection"}

func (s *Server) handleModels(w http.ResponseWriter, _ *http.Request, _ string) {
	writeJSON(w, http.StatusOK, modelFolders)
}

func (s *Server) handleModelFolder(w http.ResponseWriter, _ *http.Request, folder string) {
	for _, f := range modelFolders {
		if f != folder {
			continue
		}
		files := s.modelFiles(f)
		if files == nil {
			files = []string{}
		}
		writeJSON(w, http.StatusOK, files)
		return
	}
	w.WriteHeader(http.StatusNotFound)
}

func (s *Server) handleEmbeddings(w http.ResponseWriter, _ *http.Request, _ string) {
	writeJSON(w, http.StatusOK, []any{})
}

func (s *Server) handleExtensions(w http.ResponseWriter, _ *http.Request, _ string) {
	writeJSON(w, http.StatusOK, []any{})
}

func isUTF8(b []byte) bool { return utf8.Valid(b) }
