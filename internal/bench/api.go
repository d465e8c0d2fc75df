package bench

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/comfyfleet/comfyfleet/proto"
)

// apiClient is a RunPod endpoint-API client, as any RunPod client is: JSON
// over keep-alive HTTP connections.
type apiClient struct {
	base string
	hc   *http.Client
}

// newAPIClient keeps up to conns idle connections to base.
func newAPIClient(base string, conns int) *apiClient {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = max(conns, 2)
	tr.MaxIdleConnsPerHost = max(conns, 2)
	return &apiClient{base: strings.TrimRight(base, "/"), hc: &http.Client{Transport: tr}}
}

func (a *apiClient) close() { a.hc.CloseIdleConnections() }

// jobView is the part of RunPod's job view the bench reads.
type jobView struct {
	ID            string       `json:"id"`
	Status        proto.Status `json:"status"`
	DelayTime     int64        `json:"delayTime"`
	ExecutionTime int64        `json:"executionTime"`
	Error         string       `json:"error"`
	Output        *struct {
		Images []struct {
			Filename string `json:"filename"`
			Type     string `json:"type"`
			Data     string `json:"data"`
		} `json:"images"`
	} `json:"output"`
}

// imageBytes reads the images of a finished job as a client that saves
// them would: it decodes the inline (base64) ones and downloads the
// s3_url ones, and returns how many bytes they hold.
func (a *apiClient) imageBytes(ctx context.Context, v *jobView) (int, error) {
	if v.Output == nil || len(v.Output.Images) == 0 {
		return 0, fmt.Errorf("job %s: no image in the output", v.ID)
	}
	n := 0
	for _, im := range v.Output.Images {
		switch im.Type {
		case "base64":
			data, err := base64.StdEncoding.DecodeString(im.Data)
			if err != nil {
				return 0, fmt.Errorf("job %s: image %s: %w", v.ID, im.Filename, err)
			}
			n += len(data)
		case "s3_url":
			k, err := a.download(ctx, im.Data)
			if err != nil {
				return 0, fmt.Errorf("job %s: image %s: %w", v.ID, im.Filename, err)
			}
			n += k
		default:
			return 0, fmt.Errorf("job %s: image %s is of type %q, neither base64 nor s3_url", v.ID, im.Filename, im.Type)
		}
	}
	return n, nil
}

// download reads an output's URL and returns its length.
func (a *apiClient) download(ctx context.Context, u string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET its URL: HTTP %d", resp.StatusCode)
	}
	k, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return 0, fmt.Errorf("read its URL: %w", err)
	}
	return int(k), nil
}

func (a *apiClient) call(ctx context.Context, method, path string, body []byte) (*jobView, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("read the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %d: %.300s", resp.StatusCode, data)
	}
	var v jobView
	if err := json.Unmarshal(data, &v); err != nil {
		return nil, fmt.Errorf("decode the answer: %w", err)
	}
	return &v, nil
}

// runSync posts a job to /runsync and returns its view once it finished.
func (a *apiClient) runSync(ctx context.Context, body []byte) (*jobView, error) {
	v, err := a.call(ctx, http.MethodPost, "/runsync", body)
	if err != nil {
		return nil, fmt.Errorf("runsync: %w", err)
	}
	if v.Status != proto.StatusCompleted {
		return nil, fmt.Errorf("runsync: job %s ended %s: %s", v.ID, v.Status, v.Error)
	}
	return v, nil
}

// run posts a job to /run and returns its id.
func (a *apiClient) run(ctx context.Context, body []byte) (string, error) {
	v, err := a.call(ctx, http.MethodPost, "/run", body)
	if err != nil {
		return "", fmt.Errorf("run: %w", err)
	}
	if v.ID == "" {
		return "", fmt.Errorf("run: the answer has no job id")
	}
	return v.ID, nil
}

// status reads a job's view.
func (a *apiClient) status(ctx context.Context, id string) (*jobView, error) {
	v, err := a.call(ctx, http.MethodGet, "/status/"+url.PathEscape(id), nil)
	if err != nil {
		return nil, fmt.Errorf("status %s: %w", id, err)
	}
	return v, nil
}
