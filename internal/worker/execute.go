package worker

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"mime"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/comfy"
	"github.com/comfyfleet/comfyfleet/proto"
)

// execute uploads the job's inputs, runs its workflow and stores its outputs.
func (w *Worker) execute(ctx context.Context, log *zap.Logger, job *proto.Job, attempt int) (*proto.Output, error) {
	in, err := proto.DecodeInput(job.Input)
	if err != nil {
		return nil, &failure{msg: err.Error()}
	}
	if err := w.uploadInputs(ctx, job.ID, in.Images); err != nil {
		return nil, err
	}
	opts := comfy.RunOptions{PromptID: uuid.NewString(), OnProgress: w.progressReporter(ctx, job.ID, attempt)}
	key := in.ComfyOrgAPIKey
	if key == "" {
		key = w.cfg.ComfyOrgAPIKey
	}
	if key != "" {
		opts.ExtraData = map[string]any{"api_key_comfy_org": key}
	}
	res, err := w.comfy.Run(ctx, in.Workflow, opts)
	if err != nil {
		if ctx.Err() != nil {
			// The job is being taken away (shutdown): stop the GPU work too.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			if cerr := w.comfy.Cancel(cctx, opts.PromptID); cerr != nil {
				log.Warn("cancel prompt in comfyui", zap.String("prompt_id", opts.PromptID), zap.Error(cerr))
			}
			cancel()
		}
		return nil, err
	}
	return w.collect(ctx, log, job.ID, attempt, res)
}

// uploadInputs puts every input image into ComfyUI's input folder. As in
// worker-comfyui every image is attempted, and any failure fails the job
// with one detail line per image.
func (w *Worker) uploadInputs(ctx context.Context, jobID string, images []proto.InputImage) error {
	var details []string
	for _, img := range images {
		r, err := w.openInput(ctx, img)
		if err != nil {
			details = append(details, err.Error())
			continue
		}
		br := bufio.NewReader(r)
		head, _ := br.Peek(512)
		ctype := http.DetectContentType(head)
		_, err = w.comfy.UploadImage(ctx, img.Name, "", br, ctype, true)
		r.Close()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			details = append(details, fmt.Sprintf("Error uploading %s: %v", img.Name, err))
		}
	}
	if len(details) > 0 {
		return &failure{msg: "Failed to upload one or more input images", details: details}
	}
	return nil
}

// openInput returns an input image's bytes, from the message or the blob store.
func (w *Worker) openInput(ctx context.Context, img proto.InputImage) (io.ReadCloser, error) {
	if img.Blob != "" {
		r, _, err := w.blobs.Get(ctx, img.Blob)
		if err != nil {
			return nil, fmt.Errorf("Error fetching %s from the blob store: %v", img.Name, err)
		}
		return r, nil
	}
	data, err := proto.DecodeImageData(img.Image)
	if err != nil {
		return nil, fmt.Errorf("Error decoding base64 for %s: %v", img.Name, err)
	}
	return io.NopCloser(bytes.NewReader(data)), nil
}

// progressReporter publishes throttled progress events.
func (w *Worker) progressReporter(ctx context.Context, jobID string, attempt int) func(comfy.Progress) {
	var mu sync.Mutex
	var last time.Time
	return func(p comfy.Progress) {
		if p.State != "" {
			return // node start/finish; the ticks carry the progress
		}
		mu.Lock()
		now := time.Now()
		if now.Sub(last) < w.cfg.ProgressEvery && p.Value < p.Max {
			mu.Unlock()
			return
		}
		last = now
		mu.Unlock()
		pct := 0.0
		if p.Max > 0 {
			pct = p.Value * 100 / p.Max
		}
		w.event(ctx, &proto.Event{JobID: jobID, Type: proto.EventProgress, Attempt: attempt, WorkerID: w.cfg.ID,
			Progress: &proto.Progress{Node: p.Node, Value: int64(p.Value), Max: int64(p.Max), Percent: pct}})
	}
}

// collect fetches every output file of the prompt into the blob store and
// builds the job's output.
func (w *Worker) collect(ctx context.Context, log *zap.Logger, jobID string, attempt int, res *comfy.Result) (*proto.Output, error) {
	out := &proto.Output{Images: []proto.OutputItem{}}
	files := res.Files()
	texts := res.Texts()
	if len(files) == 0 && len(texts) == 0 && (res.Entry == nil || len(res.Entry.Outputs) == 0) {
		return nil, &failure{msg: "Job processing failed", details: []string{fmt.Sprintf("No outputs found in history for prompt %s.", res.PromptID)}}
	}
	for _, f := range files {
		if f.Type == "temp" {
			continue // previews, as worker-comfyui
		}
		if f.Filename == "" {
			out.Errors = append(out.Errors, fmt.Sprintf("Skipping image in node %s due to missing filename", f.NodeID))
			continue
		}
		item, err := w.storeOutput(ctx, jobID, attempt, f)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			log.Warn("fetch output", zap.String("filename", f.Filename), zap.Error(err))
			out.Errors = append(out.Errors, fmt.Sprintf("Failed to fetch image data for %s from /view endpoint.", f.Filename))
			continue
		}
		switch kindOf(f) {
		case "videos":
			out.Videos = append(out.Videos, item)
		case "audio":
			out.Audio = append(out.Audio, item)
		case "images":
			out.Images = append(out.Images, item)
		default:
			out.Files = append(out.Files, item)
		}
	}
	for _, t := range texts {
		out.Text = append(out.Text, proto.OutputItem{Type: proto.ItemText, Data: t.Text, NodeID: t.NodeID, Mime: "text/plain"})
	}
	n := len(out.Images) + len(out.Videos) + len(out.Audio) + len(out.Files) + len(out.Text)
	if n == 0 {
		if len(out.Errors) > 0 {
			return nil, &failure{msg: "Job processing failed", details: out.Errors}
		}
		out.Status = proto.StatusNoImages
	}
	return out, nil
}

// storeOutput streams one output file from ComfyUI into the blob store.
func (w *Worker) storeOutput(ctx context.Context, jobID string, attempt int, f comfy.File) (proto.OutputItem, error) {
	body, err := w.comfy.View(ctx, f.FileRef)
	if err != nil {
		return proto.OutputItem{}, err
	}
	defer body.Close()
	mt := mimeOf(f.Filename)
	key := blob.OutputKey(jobID, attempt, f.NodeID, path.Join(f.Subfolder, f.Filename))
	info, err := w.blobs.Put(ctx, key, mt, body)
	if err != nil {
		return proto.OutputItem{}, err
	}
	if info.Size == 0 {
		_ = w.blobs.Delete(ctx, key)
		return proto.OutputItem{}, fmt.Errorf("empty file")
	}
	return proto.OutputItem{
		Filename:  f.Filename,
		Type:      proto.ItemBase64,
		NodeID:    f.NodeID,
		Subfolder: f.Subfolder,
		Mime:      mt,
		Size:      info.Size,
		Blob:      key,
	}, nil
}

// kindOf sorts an output file into the output's lists.
func kindOf(f comfy.File) string {
	mt := mimeOf(f.Filename)
	switch {
	case strings.HasPrefix(mt, "video/"), f.Kind == "gifs", f.Kind == "videos", f.Kind == "video":
		return "videos"
	case strings.HasPrefix(mt, "audio/"), f.Kind == "audio":
		return "audio"
	case strings.HasPrefix(mt, "image/") && f.Kind == "images":
		return "images"
	}
	return "files"
}

var extraTypes = map[string]string{
	".webp": "image/webp", ".webm": "video/webm", ".mp4": "video/mp4", ".mov": "video/quicktime", ".mkv": "video/x-matroska",
	".flac": "audio/flac", ".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".opus": "audio/opus",
	".glb": "model/gltf-binary", ".gif": "image/gif", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
}

func mimeOf(name string) string {
	ext := strings.ToLower(path.Ext(name))
	if t, ok := extraTypes[ext]; ok {
		return t
	}
	if t := mime.TypeByExtension(ext); t != "" {
		return t
	}
	return "application/octet-stream"
}
