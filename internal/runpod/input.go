package runpod

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/proto"
)

// offloadImages moves input images larger than the inline limit into the
// blob store, so the NATS message stays small, and returns the input to
// publish. The workflow's bytes are kept as they came.
func (a *API) offloadImages(ctx context.Context, jobID string, raw json.RawMessage, in *proto.Input) (json.RawMessage, error) {
	moved := false
	for i := range in.Images {
		img := &in.Images[i]
		if img.Blob != "" || len(img.Image) <= a.cfg.InlineBlobMax {
			continue
		}
		data, err := proto.DecodeImageData(img.Image)
		if err != nil {
			return nil, &proto.InputError{Msg: fmt.Sprintf("Failed to upload one or more input images: Error decoding base64 for %s: %v", img.Name, err)}
		}
		key := blob.InputKey(jobID, img.Name)
		if _, err := a.blobs.Put(ctx, key, "", bytes.NewReader(data)); err != nil {
			return nil, err
		}
		img.Image, img.Blob = "", key
		moved = true
	}
	if !moved {
		return raw, nil
	}
	return json.Marshal(in)
}
