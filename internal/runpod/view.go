package runpod

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/proto"
)

// jobView is RunPod's job view (runpod-protocol.md §C.4).
type jobView struct {
	ID            string          `json:"id"`
	Status        proto.Status    `json:"status"`
	DelayTime     int64           `json:"delayTime,omitempty"`
	ExecutionTime int64           `json:"executionTime,omitempty"`
	Output        json.RawMessage `json:"output,omitempty"`
	Error         string          `json:"error,omitempty"`
	WorkerID      string          `json:"workerId,omitempty"`
	Retries       int             `json:"retries,omitempty"`
}

// maxInlineOutput keeps an answer within RunPod's 20 MB result limit.
const maxInlineOutput = 20 << 20

func (a *API) writeView(w http.ResponseWriter, ctx context.Context, rec *proto.Record) {
	v := jobView{
		ID:            rec.ID,
		Status:        rec.Status,
		DelayTime:     rec.DelayTime().Milliseconds(),
		ExecutionTime: rec.ExecutionTime().Milliseconds(),
		Error:         rec.Error,
		WorkerID:      rec.WorkerID,
		Retries:       rec.Retries,
	}
	if len(rec.Output) > 0 {
		out, err := a.inlineOutput(ctx, rec.Output)
		if err != nil {
			a.unavailable(w, "read job output", err)
			return
		}
		v.Output = out
	}
	writeJSON(w, http.StatusOK, v)
}

// inlineOutput fills the data of every base64 item from the blob store.
// Outputs that are not an Output (a failure's details) pass unchanged.
func (a *API) inlineOutput(ctx context.Context, raw json.RawMessage) (json.RawMessage, error) {
	var out proto.Output
	if err := json.Unmarshal(raw, &out); err != nil || !bytes.Contains(raw, []byte(`"blob"`)) {
		return raw, nil
	}
	budget := int64(maxInlineOutput)
	for _, list := range [][]proto.OutputItem{out.Images, out.Videos, out.Audio, out.Files} {
		for i := range list {
			it := &list[i]
			if it.Blob == "" || it.Type != proto.ItemBase64 {
				continue
			}
			if it.Size*4/3 > budget {
				out.Errors = append(out.Errors, fmt.Sprintf("%s (%d bytes) is too large to return inline within the 20 MB result limit; configure S3 outputs", it.Filename, it.Size))
				it.Blob = ""
				continue
			}
			data, err := a.readBlob(ctx, it.Blob)
			if err != nil {
				a.log.Warn("read output blob", zap.String("blob", it.Blob), zap.Error(err))
				out.Errors = append(out.Errors, fmt.Sprintf("Failed to read %s from the blob store: %v", it.Filename, err))
				it.Blob = ""
				continue
			}
			it.Data = data
			budget -= int64(len(data))
			it.Blob = ""
		}
	}
	return json.Marshal(out)
}

func (a *API) readBlob(ctx context.Context, key string) (string, error) {
	r, _, err := a.blobs.Get(ctx, key)
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
