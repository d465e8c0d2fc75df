package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"
)

// promptSpan is one prompt's run in a ComfyUI executor, from its history
// entry's status.messages: the timestamps (Unix ms, ComfyUI's own clock
// and resolution) of execution_start and of the message that ended it.
type promptSpan struct {
	ID         string
	Start, End int64
	// Seed is the workflow's sampler seed as written, which names the
	// bench's jobs; "" when the workflow has none.
	Seed string
}

// executorSpans reads GET /history of one ComfyUI and returns the prompts
// that started at since or later and have ended, by start time.
//
// Milliseconds are what ComfyUI records; an emulator that reported its
// executor's idle time itself, in nanoseconds, would measure gaps below
// a millisecond, which these timestamps round to 0 or 1.
func executorSpans(ctx context.Context, baseURL string, since time.Time) ([]promptSpan, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(baseURL, "/")+"/history", nil)
	if err != nil {
		return nil, fmt.Errorf("read history: %w", err)
	}
	req.Close = true // one read per ComfyUI: keep no idle connection behind
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("read history: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("read history: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("read history: HTTP %d", resp.StatusCode)
	}
	spans, err := decodeSpans(body)
	if err != nil {
		return nil, fmt.Errorf("read history of %s: %w", baseURL, err)
	}
	from := since.UnixMilli()
	spans = slices.DeleteFunc(spans, func(s promptSpan) bool { return s.Start < from })
	return spans, nil
}

// decodeSpans decodes a /history answer into the spans of its finished
// prompts, by start time.
func decodeSpans(body []byte) ([]promptSpan, error) {
	var entries map[string]struct {
		// Prompt is [number, prompt_id, workflow, extra_data, outputs].
		Prompt []json.RawMessage `json:"prompt"`
		Status *struct {
			Messages [][]json.RawMessage `json:"messages"`
		} `json:"status"`
	}
	if err := json.Unmarshal(body, &entries); err != nil {
		return nil, fmt.Errorf("decode history: %w", err)
	}
	var out []promptSpan
	for id, e := range entries {
		if e.Status == nil {
			continue
		}
		s := promptSpan{ID: id, Start: -1, End: -1}
		if len(e.Prompt) > 2 {
			s.Seed = workflowSeed(e.Prompt[2])
		}
		for _, m := range e.Status.Messages {
			if len(m) != 2 {
				continue
			}
			var typ string
			var data struct {
				Timestamp int64 `json:"timestamp"`
			}
			if json.Unmarshal(m[0], &typ) != nil || json.Unmarshal(m[1], &data) != nil {
				continue
			}
			switch typ {
			case "execution_start":
				s.Start = data.Timestamp
			case "execution_success", "execution_error", "execution_interrupted":
				s.End = data.Timestamp
			}
		}
		if s.Start >= 0 && s.End >= s.Start {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b promptSpan) int {
		return cmp.Or(cmp.Compare(a.Start, b.Start), cmp.Compare(a.End, b.End))
	})
	return out, nil
}

// workflowSeed returns the seed input of a workflow's first node that has
// one, digits as written.
func workflowSeed(workflow json.RawMessage) string {
	var nodes map[string]struct {
		Inputs struct {
			Seed json.Number `json:"seed"`
		} `json:"inputs"`
	}
	if json.Unmarshal(workflow, &nodes) != nil {
		return ""
	}
	for _, n := range nodes {
		if n.Inputs.Seed != "" {
			return n.Inputs.Seed.String()
		}
	}
	return ""
}
