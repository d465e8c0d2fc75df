package runpodtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// MockWorkerConfig is a RunPod Python worker's environment and its
// runpod.serverless.start config, for the mock-worker handler.
type MockWorkerConfig struct {
	// The RUNPOD_WEBHOOK_* templates, RUNPOD_AI_API_KEY, RUNPOD_POD_ID.
	GetJob, PostOutput, PostStream, Ping string
	APIKey, PodID                        string
	// PingInterval is RUNPOD_PING_INTERVAL; 0 means 1 s.
	PingInterval time.Duration
	// Concurrency is what concurrency_modifier returns; 0 means 1.
	Concurrency int
	// Generator runs the handler as a generator over mock_return (the
	// mock-worker's --generator); AggregateStream is
	// return_aggregate_stream.
	Generator, AggregateStream bool
	// RefreshWorker is the config's refresh_worker.
	RefreshWorker bool
	// RetryWaits are FibonacciRetry's waits; nil means 2 s, 3 s.
	RetryWaits []time.Duration
	// ThrottleWait is the SDK's 5 s after a 429; 0 means 5 s.
	ThrottleWait time.Duration
	// StopIdleWait is the SDK's 1 s between stop polls; 0 means 1 s.
	StopIdleWait time.Duration
	// Version is the runpod_version reported; "" means "unknown".
	Version string
	// Client sends the requests; nil means a plain client.
	Client *http.Client
}

// MockWorker is a Go port of what runpod-python 1.12.0's worker does with
// RunPod's mock-worker handler (runpod-workers/mock-worker): it takes,
// runs and reports jobs with exactly the requests of runpod-protocol.md
// Appendix A — URLs built by string replacement (§A.3), the aiohttp
// session's headers with a sticky X-Request-ID and the form content type
// on JSON results (§A.4), Python's JSON spacing, results shaped as §A.7,
// FibonacciRetry on 5xx, requests-style pings with comma-joined job ids
// and the job-stop channel.
//
// The handler reads the job input: mock_return (the result; a list for a
// generator), mock_delay (seconds), mock_error (raise), mock_crash (the
// process dies: no more requests of any kind), mock_refresh (return
// refresh_worker), and, beyond the original handler, mock_progress (a
// list of values sent with progress_update before returning).
type MockWorker struct {
	cfg     MockWorkerConfig
	hc      *http.Client
	jobGet  string
	ua      string
	session http.Header // the aiohttp session's headers; X-Request-ID sticks

	mu       sync.Mutex
	held     map[string]context.CancelFunc
	order    []string
	slot     chan struct{}
	killed   bool
	reported []string

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	exited chan struct{}
}

// StartMockWorker starts the worker's loops; it stops at the end of the
// test.
func StartMockWorker(t testing.TB, cfg MockWorkerConfig) *MockWorker {
	t.Helper()
	if cfg.PingInterval == 0 {
		cfg.PingInterval = time.Second
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 1
	}
	if cfg.RetryWaits == nil {
		cfg.RetryWaits = []time.Duration{2 * time.Second, 3 * time.Second}
	}
	if cfg.ThrottleWait == 0 {
		cfg.ThrottleWait = 5 * time.Second
	}
	if cfg.StopIdleWait == 0 {
		cfg.StopIdleWait = time.Second
	}
	if cfg.Version == "" {
		cfg.Version = "unknown"
	}
	hc := cfg.Client
	if hc == nil {
		hc = &http.Client{}
	}
	m := &MockWorker{
		cfg: cfg, hc: hc, held: map[string]context.CancelFunc{}, slot: make(chan struct{}, 1), exited: make(chan struct{}),
		jobGet: strings.ReplaceAll(cfg.GetJob, "$ID", cfg.PodID),
		ua:     "RunPod-Python-SDK/" + cfg.Version + " (Linux 6.1.0; x86_64) Language/Python 3.11.2",
	}
	m.session = http.Header{}
	m.session.Set("Content-Type", "application/json")
	m.session.Set("Authorization", cfg.APIKey)
	m.session.Set("User-Agent", m.ua)
	m.session.Set("Accept", "*/*")
	m.session.Set("Accept-Encoding", "gzip, deflate")
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.wg.Add(1)
	go func() { defer m.wg.Done(); m.takeLoop() }()
	if strings.Contains(m.jobGet, "/job-take/") {
		m.wg.Add(1)
		go func() { defer m.wg.Done(); m.stopLoop() }()
	}
	if cfg.APIKey != "" && cfg.PodID != "" && cfg.Ping != "" {
		m.wg.Add(1)
		go func() { defer m.wg.Done(); m.pingLoop() }()
	}
	go func() { m.wg.Wait(); close(m.exited) }()
	t.Cleanup(m.Stop)
	return m
}

// Stop ends the worker: no more takes; held jobs are abandoned.
func (m *MockWorker) Stop() {
	m.cancel()
	<-m.exited
}

// Exited is closed once the worker process is gone (stopped, crashed, or
// refreshed).
func (m *MockWorker) Exited() <-chan struct{} { return m.exited }

// Reported lists the job ids whose final result was posted.
func (m *MockWorker) Reported() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.reported...)
}

// Held lists the jobs the worker runs now (what its pings name).
func (m *MockWorker) Held() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.order...)
}

// Crash is os._exit(1): everything stops at once, mid-request; held jobs
// are never reported and pings stop.
func (m *MockWorker) Crash() { m.crash() }

func (m *MockWorker) crash() {
	m.mu.Lock()
	m.killed = true
	m.mu.Unlock()
	m.cancel()
}

func (m *MockWorker) alive() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return !m.killed && m.ctx.Err() == nil
}

func (m *MockWorker) sessionHeaders() http.Header {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.session.Clone()
}

func (m *MockWorker) do(method, u string, header http.Header, body []byte) (*http.Response, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(m.ctx, method, u, rd)
	if err != nil {
		return nil, nil, err
	}
	req.Header = header
	resp, err := m.hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp, data, err
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// takeLoop is rp_scale's job-take loop (§A.5, §A.13).
func (m *MockWorker) takeLoop() {
	for m.alive() {
		m.mu.Lock()
		needed, inProgress := m.cfg.Concurrency-len(m.held), len(m.held) > 0
		m.mu.Unlock()
		if needed <= 0 {
			select {
			case <-m.slot:
			case <-m.ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		flag := "0"
		if inProgress {
			flag = "1"
		}
		u := m.jobGet + "&job_in_progress=" + flag
		if needed > 1 {
			u = strings.ReplaceAll(m.jobGet, "/job-take/", "/job-take-batch/") + "&batch_size=" + strconv.Itoa(needed) + "&job_in_progress=" + flag
		}
		resp, body, err := m.do(http.MethodGet, u, m.sessionHeaders(), nil)
		if err != nil {
			sleepCtx(m.ctx, 50*time.Millisecond)
			continue
		}
		switch {
		case resp.StatusCode == 204, resp.StatusCode == 400:
			continue
		case resp.StatusCode == 429:
			sleepCtx(m.ctx, m.cfg.ThrottleWait)
			continue
		case resp.StatusCode < 200 || resp.StatusCode > 299:
			sleepCtx(m.ctx, 50*time.Millisecond) // the SDK loops at once; spare the test
			continue
		}
		mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		if mt != "application/json" || len(body) == 0 || !json.Valid(body) {
			continue
		}
		var jobs []json.RawMessage
		if bytes.TrimSpace(body)[0] == '[' {
			_ = json.Unmarshal(body, &jobs)
		} else {
			jobs = []json.RawMessage{body}
		}
		for _, raw := range jobs {
			var j map[string]json.RawMessage
			if json.Unmarshal(raw, &j) != nil {
				continue
			}
			var id string
			_, hasInput := j["input"]
			if json.Unmarshal(j["id"], &id) != nil || !hasInput {
				continue // "Job has missing field(s): id or input."
			}
			jctx, cancel := context.WithCancel(m.ctx)
			m.mu.Lock()
			m.held[id] = cancel
			m.order = append(m.order, id)
			m.mu.Unlock()
			m.wg.Add(1)
			go func() { defer m.wg.Done(); m.runJob(jctx, id, j["input"]) }()
		}
	}
}

func (m *MockWorker) release(id string) {
	m.mu.Lock()
	if c, ok := m.held[id]; ok {
		c()
		delete(m.held, id)
	}
	for i, o := range m.order {
		if o == id {
			m.order = append(m.order[:i], m.order[i+1:]...)
			break
		}
	}
	m.mu.Unlock()
	select {
	case m.slot <- struct{}{}:
	default:
	}
}

type mockInput struct {
	Return   json.RawMessage   `json:"mock_return"`
	Delay    float64           `json:"mock_delay"`
	Error    json.RawMessage   `json:"mock_error"`
	Crash    json.RawMessage   `json:"mock_crash"`
	Refresh  json.RawMessage   `json:"mock_refresh"`
	Progress []json.RawMessage `json:"mock_progress"`
}

// runJob runs the mock-worker handler on one job and reports it.
func (m *MockWorker) runJob(ctx context.Context, id string, input json.RawMessage) {
	defer m.release(id)
	var in mockInput
	_ = json.Unmarshal(input, &in)
	if truthy(in.Crash) {
		m.crash()
		return
	}
	ret := in.Return
	if len(ret) == 0 {
		ret = json.RawMessage(`"Hello World"`)
	}
	for _, p := range in.Progress {
		// runpod.serverless.progress_update: the job-done URL, status
		// IN_PROGRESS, from its own session.
		h := m.sessionHeaders()
		h.Set("X-Request-ID", id)
		m.post(ctx, m.doneURL(id, false), id, h, pyDumps(pyObj{{"status", "IN_PROGRESS"}, {"output", p}}), false)
	}
	if in.Delay > 0 && !m.generatorWait(ctx, in.Delay) {
		return // stopped (task.cancel): nothing is posted
	}
	isStream := m.cfg.Generator
	var result pyObj
	if !m.cfg.Generator {
		switch {
		case truthy(in.Error):
			result = pyObj{{"error", string(pyDumps(m.report(errorText(in.Error))))}}
		case truthy(in.Refresh):
			obj, ok := orderedObject(ret)
			if !ok {
				obj = pyObj{{"result", ret}}
			}
			result = shapeResult(append(obj, pyKV{"refresh_worker", true}))
		default:
			result = shapeReturn(ret)
		}
	} else {
		var items []json.RawMessage
		_ = json.Unmarshal(ret, &items)
		var agg []any
		for i, v := range items {
			if i > 0 && in.Delay > 0 && !m.generatorWait(ctx, in.Delay) {
				return
			}
			if obj, ok := orderedObject(v); ok && truthy(obj.get("error")) {
				result = pyObj{{"error", errorText(obj.get("error"))}}
				break
			}
			m.post(ctx, strings.ReplaceAll(strings.ReplaceAll(m.cfg.PostStream, "$RUNPOD_POD_ID", m.cfg.PodID), "$ID", id)+"&isStream=false", id, nil, pyDumps(pyObj{{"output", v}}), true)
			if m.cfg.AggregateStream {
				agg = append(agg, v)
			}
		}
		if result == nil && truthy(in.Error) {
			result = pyObj{{"error", "handler: " + errorText(in.Error) + " \ntraceback: Traceback (most recent call last):\n  File \"handler.py\", line 1, in handler\nException: " + errorText(in.Error) + "\n"}}
		}
		if result == nil {
			if agg == nil {
				agg = []any{}
			}
			result = pyObj{{"output", agg}}
		}
	}
	if m.cfg.RefreshWorker && result.get("stopPod") == nil {
		result = append(result, pyKV{"stopPod", true})
	}
	if ctx.Err() != nil {
		return
	}
	m.post(ctx, m.doneURL(id, isStream), id, nil, pyDumps(result), true)
	m.mu.Lock()
	m.reported = append(m.reported, id)
	m.mu.Unlock()
	if m.cfg.RefreshWorker {
		// kill_worker: the loops stop and the process exits.
		m.cancel()
	}
}

func (m *MockWorker) generatorWait(ctx context.Context, seconds float64) bool {
	t := time.NewTimer(time.Duration(seconds * float64(time.Second)))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (m *MockWorker) doneURL(id string, isStream bool) string {
	return strings.ReplaceAll(strings.ReplaceAll(m.cfg.PostOutput, "$RUNPOD_POD_ID", m.cfg.PodID), "$ID", id) + "&isStream=" + strconv.FormatBool(isStream)
}

// post is send_result/stream_result: the form content type over a JSON
// body, "charset: utf-8", the job's id made the session's X-Request-ID,
// and FibonacciRetry(attempts=3) on 5xx only.
func (m *MockWorker) post(ctx context.Context, u, id string, h http.Header, body []byte, session bool) {
	if session {
		m.mu.Lock()
		m.session.Set("X-Request-ID", id)
		m.mu.Unlock()
		h = m.sessionHeaders()
	}
	h.Set("Content-Type", "application/x-www-form-urlencoded")
	h.Set("charset", "utf-8")
	for attempt := 0; ; attempt++ {
		resp, _, err := m.do(http.MethodPost, u, h.Clone(), body)
		if err != nil || resp.StatusCode < 500 || attempt >= len(m.cfg.RetryWaits) {
			return
		}
		sleepCtx(m.ctx, m.cfg.RetryWaits[attempt])
	}
}

// report is the SDK's error report for a raised exception (§A.7).
func (m *MockWorker) report(msg string) pyObj {
	return pyObj{
		{"error_type", "<class 'Exception'>"},
		{"error_message", msg},
		{"error_traceback", "Traceback (most recent call last):\n  File \"handler.py\", line 1, in handler\nException: " + msg + "\n"},
		{"hostname", "host-1"},
		{"worker_id", m.cfg.PodID},
		{"runpod_version", m.cfg.Version},
	}
}

func errorText(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	if strings.TrimSpace(string(raw)) == "true" {
		return "Mock error"
	}
	return string(raw)
}

// shapeReturn is run_job's shaping of a handler's return value (§A.7).
func shapeReturn(ret json.RawMessage) pyObj {
	if obj, ok := orderedObject(ret); ok {
		return shapeResult(obj)
	}
	return pyObj{{"output", ret}}
}

func shapeResult(obj pyObj) pyObj {
	var rest pyObj
	var errV json.RawMessage
	var stop bool
	for _, kv := range obj {
		switch kv.K {
		case "error":
			if raw, ok := kv.V.(json.RawMessage); ok && truthy(raw) {
				errV = raw
			}
		case "refresh_worker":
			if b, ok := kv.V.(bool); ok && b {
				stop = true
			} else if raw, ok := kv.V.(json.RawMessage); ok && truthy(raw) {
				stop = true
			}
		default:
			rest = append(rest, kv)
		}
	}
	var out pyObj
	switch {
	case errV != nil && len(rest) > 0:
		out = pyObj{{"output", rest}, {"error", errV}}
	case errV != nil:
		out = pyObj{{"error", errV}}
	default:
		if rest == nil {
			rest = pyObj{}
		}
		out = pyObj{{"output", rest}}
	}
	if stop {
		out = append(out, pyKV{"stopPod", true})
	}
	return out
}

func (o pyObj) get(k string) json.RawMessage {
	for _, kv := range o {
		if kv.K == k {
			switch v := kv.V.(type) {
			case json.RawMessage:
				return v
			case bool:
				return json.RawMessage(strconv.FormatBool(v))
			}
			return json.RawMessage(pyDumps(kv.V))
		}
	}
	return nil
}

// orderedObject decodes a JSON object keeping its keys' order.
func orderedObject(raw json.RawMessage) (pyObj, bool) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	tok, err := dec.Token()
	if d, ok := tok.(json.Delim); err != nil || !ok || d != '{' {
		return nil, false
	}
	obj := pyObj{}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return nil, false
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, false
		}
		obj = append(obj, pyKV{k.(string), v})
	}
	return obj, true
}

// stopLoop is the job-stop channel (§A.11).
func (m *MockWorker) stopLoop() {
	u := strings.ReplaceAll(m.jobGet, "/job-take/", "/job-stop/")
	for m.alive() {
		resp, body, err := m.do(http.MethodGet, u, m.sessionHeaders(), nil)
		switch {
		case err != nil:
			sleepCtx(m.ctx, m.cfg.StopIdleWait)
		case resp.StatusCode == 204:
			sleepCtx(m.ctx, m.cfg.StopIdleWait)
		case resp.StatusCode == 429:
			sleepCtx(m.ctx, m.cfg.ThrottleWait)
		case resp.StatusCode != 200:
			sleepCtx(m.ctx, m.cfg.StopIdleWait)
		default:
			var answer struct {
				JobsToStop []json.RawMessage `json:"jobsToStop"`
			}
			if json.Unmarshal(body, &answer) != nil {
				continue
			}
			for _, raw := range answer.JobsToStop {
				var id string
				if json.Unmarshal(raw, &id) != nil {
					continue
				}
				m.release(id) // task.cancel(): no result is posted
			}
		}
	}
}

// pingLoop is the heartbeat process, with the requests library's headers
// and parameter encoding (§A.12).
func (m *MockWorker) pingLoop() {
	base := strings.ReplaceAll(m.cfg.Ping, "$RUNPOD_POD_ID", m.cfg.PodID)
	t := time.NewTicker(m.cfg.PingInterval)
	defer t.Stop()
	for m.alive() {
		m.mu.Lock()
		ids := strings.Join(m.order, ",")
		m.mu.Unlock()
		params := ""
		if ids != "" {
			params = "job_id=" + url.QueryEscape(ids) + "&"
		}
		params += "runpod_version=" + url.QueryEscape(m.cfg.Version)
		sep := "?"
		if strings.Contains(base, "?") {
			sep = "&"
		}
		h := http.Header{}
		h.Set("User-Agent", "python-requests/2.28.1")
		h.Set("Accept-Encoding", "gzip, deflate")
		h.Set("Accept", "*/*")
		h.Set("Connection", "keep-alive")
		h.Set("Authorization", m.cfg.APIKey)
		_, _, _ = m.do(http.MethodGet, base+sep+params, h, nil)
		select {
		case <-m.ctx.Done():
		case <-t.C:
		}
	}
}

// String describes the worker for failure messages.
func (m *MockWorker) String() string { return fmt.Sprintf("mock worker %s", m.cfg.PodID) }
