package runpod

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/queue"
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
		if img.Blob != "" || len(img.Image) <= inlineMax || isURL(img.Image) {
			continue
		}
		if err := offload(ctx, blobs, tenant, jobID, img); err != nil {
			return nil, err
		}
		moved = true
	}
	if !moved {
		return raw, nil
	}
	return replaceImages(raw, in)
}

// offload moves one inline image to the blob store, under the tenant's
// namespace.
func offload(ctx context.Context, blobs blob.Store, tenant, jobID string, img *proto.InputImage) error {
	data, err := proto.DecodeImageData(img.Image)
	if err != nil {
		return &proto.InputError{Msg: fmt.Sprintf("Failed to upload one or more input images: Error decoding base64 for %s: %v", img.Name, err)}
	}
	key := proto.InputBlobKey(tenant, jobID, img.Name)
	if _, err := blobs.Put(ctx, key, "", bytes.NewReader(data)); err != nil {
		return err
	}
	img.Image, img.Blob = "", key
	return nil
}

// isURL reports whether an image is given by URL (the worker downloads
// it), which no blob store can hold instead.
func isURL(s string) bool {
	l := strings.ToLower(s[:min(len(s), 8)])
	return strings.HasPrefix(l, "https://") || strings.HasPrefix(l, "http://")
}

// FitMessage encodes the job message, first moving the job's images that
// are still inline to the blob store, the largest first, while the message
// is longer than limit bytes (what a NATS message may carry,
// queue.Client.MaxJobMessage; 0 means no limit): many images each under
// the inline size may together pass NATS's 1 MB. in is the job's decoded
// input, kept in step. A message that still does not fit, its workflow
// and other fields being too large alone, is a *queue.TooLargeError;
// TooLargeMessage says it to the caller. A bad image is a
// *proto.InputError.
func FitMessage(ctx context.Context, blobs blob.Store, job *proto.Job, in *proto.Input, limit int) ([]byte, error) {
	for {
		job.V = proto.Version
		msg, err := json.Marshal(job)
		if err != nil {
			return nil, fmt.Errorf("encode job %s: %w", job.ID, err)
		}
		if limit <= 0 || len(msg) <= limit {
			return msg, nil
		}
		big := -1
		for i, img := range in.Images {
			if img.Blob == "" && !isURL(img.Image) && (big < 0 || len(img.Image) > len(in.Images[big].Image)) {
				big = i
			}
		}
		if big < 0 {
			return nil, &queue.TooLargeError{JobID: job.ID, Size: len(msg), Limit: limit}
		}
		if err := offload(ctx, blobs, job.Tenant, job.ID, &in.Images[big]); err != nil {
			return nil, err
		}
		if job.Input, err = replaceImages(job.Input, in); err != nil {
			return nil, fmt.Errorf("encode job %s: %w", job.ID, err)
		}
	}
}

// TooLargeMessage is the answer to a job whose message cannot fit in a
// NATS message: how large it is, the limit, and what to do.
func TooLargeMessage(e *queue.TooLargeError) string {
	return fmt.Sprintf("the job message is %d bytes, more than the %d bytes a NATS message may carry (the NATS server's max_payload, 1 MB by default, less room for headers); "+
		"its input images are in the blob store already, so the workflow and the other input fields alone are too large: "+
		"make them smaller, pass large data as input images or by URL, or raise max_payload on the NATS server", e.Size, e.Limit)
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
