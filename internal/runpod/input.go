package runpod

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

// DefaultInlineBlobMax is the largest input image kept inside a job
// message; larger ones go to the blob store (NATS's default max payload is
// 1 MB).
const DefaultInlineBlobMax = 256 << 10

// OffloadImages moves input images whose base64 is longer than inlineMax
// into the blob store, under the tenant's namespace
// (proto.InputBlobKey), so the job message stays small, and returns the
// input to publish. When nothing moves it returns raw unchanged, so the
// workflow's bytes are kept exactly as they came. A bad image is a
// *proto.InputError with worker-comfyui's message.
func OffloadImages(ctx context.Context, blobs blob.Store, tenant, jobID string, raw json.RawMessage, in *proto.Input, inlineMax int) (json.RawMessage, error) {
	moved := false
	for i := range in.Images {
		img := &in.Images[i]
		if img.Blob != "" || len(img.Image) <= inlineMax {
			continue
		}
		data, err := proto.DecodeImageData(img.Image)
		if err != nil {
			return nil, &proto.InputError{Msg: fmt.Sprintf("Failed to upload one or more input images: Error decoding base64 for %s: %v", img.Name, err)}
		}
		key := proto.InputBlobKey(tenant, jobID, img.Name)
		if _, err := blobs.Put(ctx, key, "", bytes.NewReader(data)); err != nil {
			return nil, err
		}
		img.Image, img.Blob = "", key
		moved = true
	}
	if !moved {
		return raw, nil
	}
	return replaceImages(raw, in)
}

// InlineImages is the inverse of OffloadImages for workers that know no
// blob store (RunPod workers): every image given by blob key gets its
// bytes back as base64. When there is none it returns raw unchanged.
func InlineImages(ctx context.Context, blobs blob.Store, raw json.RawMessage) (json.RawMessage, error) {
	if !bytes.Contains(raw, []byte(`"blob"`)) {
		return raw, nil
	}
	in, err := proto.DecodeInput(raw)
	if err != nil {
		return raw, nil // not ours to judge; the worker will say
	}
	moved := false
	for i := range in.Images {
		img := &in.Images[i]
		if img.Blob == "" {
			continue
		}
		r, _, err := blobs.Get(ctx, img.Blob)
		if err != nil {
			return nil, fmt.Errorf("read input image %s: %w", img.Name, err)
		}
		var buf bytes.Buffer
		enc := base64.NewEncoder(base64.StdEncoding, &buf)
		_, err = io.Copy(enc, r)
		r.Close()
		enc.Close()
		if err != nil {
			return nil, fmt.Errorf("read input image %s: %w", img.Name, err)
		}
		img.Image, img.Blob = buf.String(), ""
		moved = true
	}
	if !moved {
		return raw, nil
	}
	return replaceImages(raw, in)
}

// replaceImages returns raw with its "images" replaced by in's, keeping
// every other field as it came (a worker may read fields the fleet does
// not know). An input given as a JSON string becomes an object.
func replaceImages(raw json.RawMessage, in *proto.Input) (json.RawMessage, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return json.Marshal(in)
	}
	imgs, err := json.Marshal(in.Images)
	if err != nil {
		return nil, err
	}
	fields["images"] = imgs
	return json.Marshal(fields)
}
