package jobview

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/proto"
)

// JobView is RunPod's job view (runpod-protocol.md §C.4): what /status,
// /status-sync, /runsync and webhooks answer.
type JobView struct {
	ID            string          `json:"id"`
	Status        proto.Status    `json:"status"`
	DelayTime     int64           `json:"delayTime,omitempty"`
	ExecutionTime int64           `json:"executionTime,omitempty"`
	Output        json.RawMessage `json:"output,omitempty"`
	Error         string          `json:"error,omitempty"`
	WorkerID      string          `json:"workerId,omitempty"`
	Retries       int             `json:"retries,omitempty"`
	// Webhook is ours, beyond RunPod's view: how the delivery of the
	// job's webhook ended, once it ended (absent while it runs, and for
	// a job without one).
	Webhook *proto.WebhookOutcome `json:"webhook,omitempty"`
}

// MaxInlineOutput keeps an answer within RunPod's 20 MB result limit.
const MaxInlineOutput = 20 << 20

// Build builds a job's RunPod view from its record. The output of a
// finished job comes back inline: the data of every base64 item is read
// from the blob store, up to MaxInlineOutput in all; an item past that
// limit, or one that cannot be read, is left out with a line in the
// output's errors that says why and what to do. Only an unreadable record
// makes it fail.
func Build(ctx context.Context, blobs blob.Store, rec *proto.Record) (*JobView, error) {
	v := &JobView{
		ID:            rec.ID,
		Status:        rec.Status,
		DelayTime:     rec.DelayTime().Milliseconds(),
		ExecutionTime: rec.ExecutionTime().Milliseconds(),
		Error:         rec.Error,
		WorkerID:      rec.WorkerID,
		Retries:       rec.Retries,
		Webhook:       rec.Webhook,
	}
	if len(rec.Output) > 0 {
		v.Output = inlineOutput(ctx, blobs, rec.Output)
	}
	return v, nil
}

// inlineOutput fills the data of every base64 item from the blob store.
// Outputs that are not an Output (a failure's details, a RunPod worker's
// own result) pass unchanged.
func inlineOutput(ctx context.Context, blobs blob.Store, raw json.RawMessage) json.RawMessage {
	if !bytes.Contains(raw, []byte(`"blob"`)) {
		return raw
	}
	var out proto.Output
	if err := json.Unmarshal(raw, &out); err != nil {
		return raw
	}
	// Keep fields of the output that proto.Output does not name.
	var extra map[string]json.RawMessage
	_ = json.Unmarshal(raw, &extra)
	budget := int64(MaxInlineOutput)
	for _, list := range [][]proto.OutputItem{out.Images, out.Videos, out.Audio, out.Files} {
		for i := range list {
			it := &list[i]
			if it.Blob == "" || it.Type != proto.ItemBase64 {
				continue
			}
			if (it.Size+2)/3*4 > budget {
				out.Errors = append(out.Errors, fmt.Sprintf("%s (%d bytes) is too large to return inline within the 20 MB result limit; configure S3 outputs (BUCKET_ENDPOINT_URL or the request's s3Config)", it.Filename, it.Size))
				it.Blob = ""
				continue
			}
			data, err := readBlob(ctx, blobs, it.Blob)
			if err != nil {
				out.Errors = append(out.Errors, fmt.Sprintf("Failed to read %s from the blob store: %v", it.Filename, err))
				it.Blob = ""
				continue
			}
			it.Data = data
			budget -= int64(len(data))
			it.Blob = ""
		}
	}
	data, err := json.Marshal(out)
	if err != nil || len(extra) == 0 {
		return data
	}
	var known map[string]json.RawMessage
	if json.Unmarshal(data, &known) != nil {
		return data
	}
	for k, v := range known {
		extra[k] = v
	}
	if _, ok := known["errors"]; !ok {
		delete(extra, "errors")
	}
	merged, err := json.Marshal(extra)
	if err != nil {
		return data
	}
	return merged
}

func readBlob(ctx context.Context, blobs blob.Store, key string) (string, error) {
	r, _, err := blobs.Get(ctx, key)
	if err != nil {
		return "", err
	}
	defer r.Close()
	var buf bytes.Buffer
	enc := base64.NewEncoder(base64.StdEncoding, &buf)
	if _, err := io.Copy(enc, r); err != nil {
		return "", err
	}
	enc.Close()
	return buf.String(), nil
}

// Chunk is what the event contributes to RunPod's /stream and to the
// output of an IN_PROGRESS job: a worker's chunk or progress value as
// posted, or for a gpuworker's progress event worker-comfyui's progress
// shape {"type":"progress","node","value","max","percent"}, and for a
// preview {"type":"preview","node","mime","data"} (the picture, base64).
// ok is false for events that carry none (status transitions).
func Chunk(e *proto.Event) (chunk json.RawMessage, ok bool) {
	switch e.Type {
	case proto.EventStream, proto.EventProgressUpdate:
		if len(e.Output) == 0 {
			return json.RawMessage("null"), true
		}
		return e.Output, true
	case proto.EventPreview:
		if e.Preview == nil {
			return nil, false
		}
		data, err := json.Marshal(struct {
			Type string `json:"type"`
			*proto.Preview
		}{"preview", e.Preview})
		if err != nil {
			return nil, false
		}
		return data, true
	case proto.EventProgress:
		if e.Progress == nil {
			return nil, false
		}
		data, err := json.Marshal(struct {
			Type string `json:"type"`
			*proto.Progress
		}{"progress", e.Progress})
		if err != nil {
			return nil, false
		}
		return data, true
	}
	return nil, false
}
