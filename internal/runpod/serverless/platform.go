package serverless

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"runtime"
	"time"

	"github.com/comfyfleet/comfyfleet/proto"
)

// job is one job as RunPod's take answers it (§A.6). Fields the fleet has
// no use for (webhook: the platform delivers its own; batchId) are not
// read.
type job struct {
	ID       string          `json:"id"`
	Input    json.RawMessage `json:"input"`
	S3Config *proto.S3Config `json:"s3Config,omitempty"`
}

// takeResult says what a take call led to.
type takeResult int

const (
	takeJobs     takeResult = iota // jobs came (possibly none were usable)
	takeEmpty                      // 204, 400, a non-JSON or empty answer
	takeThrottle                   // 429
	takeFailed                     // a transport error or another status
)

// platform makes the worker's requests to RunPod.
type platform struct {
	cfg Config
	u   urls
	hc  *http.Client
	ua  string
}

func newPlatform(cfg Config, u urls) *platform {
	return &platform{
		cfg: cfg, u: u, hc: &http.Client{},
		ua: fmt.Sprintf("comfyfleet-runpod-adapter/%s (%s; %s) Language/Go %s", cfg.Version, runtime.GOOS, runtime.GOARCH, runtime.Version()),
	}
}

// request builds a request with the headers of the SDK's aiohttp session
// (§A.4): the raw key, no "Bearer", and Content-Type application/json even
// on a GET.
func (p *platform) request(ctx context.Context, method, u string, body []byte) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", p.cfg.APIKey)
	req.Header.Set("User-Agent", p.ua)
	req.Header.Set("Accept", "*/*")
	return req, nil
}

// take asks for up to n jobs: job-take for one, job-take-batch for more.
// The platform holds an empty take open (long-poll); the call is bounded
// by TakeTimeout, as the SDK bounds it by 90 s.
func (p *platform) take(ctx context.Context, n int, inProgress bool) ([]job, takeResult, error) {
	u := p.u.take(inProgress)
	if n > 1 {
		u = p.u.takeBatch(n, inProgress)
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.TakeTimeout)
	defer cancel()
	req, err := p.request(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, takeFailed, fmt.Errorf("take: %w", err)
	}
	resp, err := p.hc.Do(req)
	if err != nil {
		return nil, takeFailed, fmt.Errorf("take: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	switch {
	case resp.StatusCode == http.StatusNoContent, resp.StatusCode == http.StatusBadRequest:
		return nil, takeEmpty, nil
	case resp.StatusCode == http.StatusTooManyRequests:
		return nil, takeThrottle, nil
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		return nil, takeFailed, fmt.Errorf("take: platform answered %s", resp.Status)
	case err != nil:
		return nil, takeFailed, fmt.Errorf("take: read answer: %w", err)
	}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if mt != "application/json" || len(bytes.TrimSpace(body)) == 0 {
		return nil, takeEmpty, nil
	}
	jobs, err := decodeJobs(body)
	if err != nil {
		return nil, takeEmpty, fmt.Errorf("take: %w", err)
	}
	if len(jobs) == 0 {
		return nil, takeEmpty, nil
	}
	return jobs, takeJobs, nil
}

// decodeJobs reads a take answer: one job object, or an array of them.
// A job without an id or input is dropped, as the SDK drops it ("Job has
// missing field(s): id or input."); the error says so when nothing usable
// is left.
func decodeJobs(body []byte) ([]job, error) {
	body = bytes.TrimSpace(body)
	var raws []json.RawMessage
	switch {
	case len(body) > 0 && body[0] == '[':
		if err := json.Unmarshal(body, &raws); err != nil {
			return nil, fmt.Errorf("decode jobs: %v", err)
		}
	case len(body) > 0 && body[0] == '{':
		raws = []json.RawMessage{body}
	default:
		return nil, fmt.Errorf("decode jobs: the answer is neither a job object nor an array")
	}
	var jobs []job
	var bad error
	for _, raw := range raws {
		var fields map[string]json.RawMessage
		if json.Unmarshal(raw, &fields) != nil {
			bad = errors.New("a job is not a JSON object")
			continue
		}
		var j job
		_, hasInput := fields["input"]
		if json.Unmarshal(raw, &j) != nil || j.ID == "" || !hasInput {
			bad = errors.New("job has missing field(s): id or input")
			continue
		}
		jobs = append(jobs, j)
	}
	if len(jobs) == 0 && bad != nil {
		return nil, fmt.Errorf("decode jobs: %w", bad)
	}
	return jobs, nil
}

// stopPoll long-polls the job-stop channel and returns the ids to stop
// (none on 204, on a malformed answer, or when the platform has no such
// route), whether the platform throttles, and a transport or status error.
func (p *platform) stopPoll(ctx context.Context, u string) (ids []string, throttled bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.StopTimeout)
	defer cancel()
	req, err := p.request(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, false, err
	}
	resp, err := p.hc.Do(req)
	if err != nil {
		return nil, false, fmt.Errorf("job-stop: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	switch {
	case resp.StatusCode == http.StatusNoContent:
		return nil, false, nil
	case resp.StatusCode == http.StatusTooManyRequests:
		return nil, true, nil
	case resp.StatusCode != http.StatusOK:
		return nil, false, fmt.Errorf("job-stop: platform answered %s", resp.Status)
	}
	var answer struct {
		JobsToStop []json.RawMessage `json:"jobsToStop"`
	}
	if json.Unmarshal(body, &answer) != nil {
		return nil, false, nil
	}
	for _, raw := range answer.JobsToStop {
		var id string
		if json.Unmarshal(raw, &id) == nil && id != "" {
			ids = append(ids, id)
		}
	}
	return ids, false, nil
}

// post sends a result or a stream chunk as the SDK does: a JSON body under
// Content-Type application/x-www-form-urlencoded, a "charset: utf-8"
// header and X-Request-ID with the job id. A 5xx answer or a transport
// error is retried after each of RetryWaits (the SDK's 2 s and 3 s); any
// other non-2xx answer is final.
func (p *platform) post(ctx context.Context, u, jobID string, body []byte) error {
	var last error
	for attempt := 0; ; attempt++ {
		last = p.postOnce(ctx, u, jobID, body)
		var se *statusError
		if last == nil || (errors.As(last, &se) && se.code < 500) || attempt >= len(p.cfg.RetryWaits) {
			return last
		}
		t := time.NewTimer(p.cfg.RetryWaits[attempt])
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(last, ctx.Err())
		case <-t.C:
		}
	}
}

type statusError struct {
	code   int
	status string
}

func (e *statusError) Error() string { return "platform answered " + e.status }

func (p *platform) postOnce(ctx context.Context, u, jobID string, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.PostTimeout)
	defer cancel()
	req, err := p.request(ctx, http.MethodPost, u, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("charset", "utf-8")
	req.Header.Set("X-Request-ID", jobID)
	resp, err := p.hc.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &statusError{code: resp.StatusCode, status: resp.Status}
	}
	return nil
}

// ping sends one heartbeat the way the SDK's requests session does: the
// raw key, no Content-Type; its answer is ignored.
func (p *platform) ping(ctx context.Context, jobIDs []string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*p.cfg.PingInterval)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.u.pingURL(jobIDs, p.cfg.Version), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", p.cfg.APIKey)
	req.Header.Set("User-Agent", p.ua)
	req.Header.Set("Accept", "*/*")
	resp, err := p.hc.Do(req)
	if err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	return nil
}
