package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"path"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/blob/s3"
	"github.com/comfyfleet/comfyfleet/internal/comfy"
	"github.com/comfyfleet/comfyfleet/internal/ssrf"
	"github.com/comfyfleet/comfyfleet/proto"
)

// Outputs: every file a prompt produced is streamed from ComfyUI's /view
// into the job's sink — the S3 store (the job's s3Config, else the
// worker's), giving an s3_url item, or the blob store, giving a base64
// item whose bytes whoever serves the output inlines — several at once,
// each retried. A file that cannot be stored becomes a line in the output's
// errors while the others return.

// outputAttempts is how many times one output is fetched and stored.
const outputAttempts = 3

// sink is where a job's outputs go: s3 when set, else the blob store.
type sink struct {
	s3 *s3.Store
}

// sinkFor picks the sink of a job: its own s3Config (reached through the
// s3Config guard), the worker's S3, or the blob store.
// The job's output.s3_prefix, when set, replaces the key prefix
// (BUCKET_PREFIX, or the s3Config's objectPath).
func (w *Worker) sinkFor(job *proto.Job) (sink, error) {
	var prefix string
	if job.Output != nil {
		prefix = job.Output.S3Prefix
	}
	c := job.S3Config
	if c == nil {
		if prefix == "" || w.s3 == nil {
			return sink{s3: w.s3}, nil
		}
		st, err := w.s3.WithPrefix(prefix)
		if err != nil {
			return sink{}, &failure{msg: "Invalid output.s3_prefix: " + err.Error()}
		}
		return sink{s3: st}, nil
	}
	st, err := s3.ForRequest(w.s3, c, prefix, w.s3Guard)
	var refusal *ssrf.Refusal
	switch {
	case errors.As(err, &refusal):
		// "s3Config.endpointUrl: address not allowed: …", before any
		// work is done.
		return sink{}, &failure{msg: refusal.Error()}
	case err != nil:
		return sink{}, &failure{msg: "Invalid s3Config: " + strings.TrimPrefix(err.Error(), "s3 config: ")}
	}
	return sink{s3: st}, nil
}

// collected is one output file's result: an item, or an error line.
type collected struct {
	item proto.OutputItem
	kind string
	err  string
}

// collect stores every output of the prompt and builds the job's output;
// n counts the items in it. Nothing at all in the history is a failure,
// as in worker-comfyui.
func (ex *execution) collect(ctx context.Context, sk sink, opts options, res *comfy.Result) (*proto.Output, int, error) {
	out := &proto.Output{Images: []proto.OutputItem{}}
	all := res.Files()
	texts := res.Texts()
	if len(all) == 0 && len(texts) == 0 && (res.Entry == nil || len(res.Entry.Outputs) == 0) {
		return nil, 0, &failure{msg: "Job processing failed", details: []string{fmt.Sprintf("No outputs found in history for prompt %s.", res.PromptID)}}
	}
	var files []comfy.File
	for _, f := range all {
		if f.Type == "temp" && !opts.includeTemp {
			continue // previews, as worker-comfyui
		}
		files = append(files, f)
	}
	keys := ex.outputKeys(sk, files)
	results := make([]collected, len(files))
	sem := make(chan struct{}, ex.w.cfg.Concurrency)
	var wg sync.WaitGroup
	for i, f := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			results[i] = ex.store(ctx, sk, keys[i], f)
			ex.touch()
		}()
	}
	wg.Wait()
	ex.removeOutputs(files, results)
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	for _, r := range results {
		if r.err != "" {
			out.Errors = append(out.Errors, r.err)
			continue
		}
		switch r.kind {
		case "videos":
			out.Videos = append(out.Videos, r.item)
		case "audio":
			out.Audio = append(out.Audio, r.item)
		case "images":
			out.Images = append(out.Images, r.item)
		default:
			out.Files = append(out.Files, r.item)
		}
	}
	for _, t := range texts {
		out.Text = append(out.Text, proto.OutputItem{Type: proto.ItemText, Data: t.Text, NodeID: t.NodeID, Mime: "text/plain"})
	}
	for _, ne := range res.NodeErrors {
		out.Errors = append(out.Errors, fmt.Sprintf("Node %s (%s) failed validation; the outputs it feeds did not run.", ne.NodeID, ne.ClassType))
	}
	n := len(out.Images) + len(out.Videos) + len(out.Audio) + len(out.Files) + len(out.Text)
	if n == 0 {
		if len(out.Errors) > 0 {
			return nil, 0, &failure{msg: "Job processing failed", details: out.Errors}
		}
		out.Status = proto.StatusNoImages
	}
	return out, n, nil
}

// outputKeys names each file in the sink. In S3 the key is
// {job_id}/{filename} after the store's prefix, keeping ComfyUI's name
// (the subfolder joins it only when two outputs share a name); in the blob
// store it is blob.OutputKey, which also names the attempt.
func (ex *execution) outputKeys(sk sink, files []comfy.File) []string {
	keys := make([]string, len(files))
	if sk.s3 == nil {
		for i, f := range files {
			keys[i] = blob.OutputKey(ex.job.ID, ex.attempt, f.NodeID, path.Join(f.Subfolder, f.Filename))
		}
		return keys
	}
	count := map[string]int{}
	for _, f := range files {
		count[f.Filename]++
	}
	used := map[string]bool{}
	for i, f := range files {
		k := ex.job.ID + "/" + f.Filename
		if count[f.Filename] > 1 {
			k = ex.job.ID + "/" + path.Join(f.Subfolder, f.Filename)
		}
		if used[k] {
			k = ex.job.ID + "/" + f.NodeID + "/" + path.Join(f.Subfolder, f.Filename)
		}
		used[k] = true
		keys[i] = k
	}
	return keys
}

// store fetches one file from ComfyUI into the sink, retrying up to
// outputAttempts times (each time from a fresh /view: a stream cannot be
// rewound). Its error lines are worker-comfyui's.
func (ex *execution) store(ctx context.Context, sk sink, key string, f comfy.File) collected {
	mt := mimeOf(f.Filename)
	res := collected{kind: kindOf(f, mt)}
	fetchFailed := fmt.Sprintf("Failed to fetch image data for %s from /view endpoint.", f.Filename)
	var lastErr error
	sourceFailed := false
	for attempt := 1; attempt <= outputAttempts; attempt++ {
		if attempt > 1 {
			t := time.NewTimer(time.Duration(attempt-1) * 200 * time.Millisecond)
			select {
			case <-ctx.Done():
				t.Stop()
				return collected{err: fetchFailed}
			case <-t.C:
			}
		}
		body, err := ex.w.comfy.View(ctx, f.FileRef)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, fs.ErrNotExist) {
				ex.log.Warn("fetch output", zap.String("filename", f.Filename), zap.Error(err))
				return collected{err: fetchFailed}
			}
			lastErr, sourceFailed = err, true
			continue
		}
		src := &trackReader{r: body}
		var info blob.Info
		if sk.s3 != nil {
			info, err = sk.s3.Put(ctx, key, mt, src)
		} else {
			info, err = ex.w.blobs.Put(ctx, key, mt, src)
		}
		body.Close()
		if err != nil {
			if ctx.Err() != nil {
				return collected{err: fetchFailed}
			}
			lastErr, sourceFailed = err, src.err != nil && !errors.Is(src.err, io.EOF)
			var refusal *ssrf.Refusal
			if errors.As(err, &refusal) {
				break // refused by the guard: the same again
			}
			continue
		}
		if info.Size == 0 {
			// worker-comfyui's check is "if image_bytes:".
			if sk.s3 != nil {
				_ = sk.s3.Delete(ctx, key)
			} else {
				_ = ex.w.blobs.Delete(ctx, key)
			}
			return collected{err: fetchFailed}
		}
		res.item = proto.OutputItem{Filename: f.Filename, NodeID: f.NodeID, Subfolder: f.Subfolder, Mime: mt, Size: info.Size}
		if sk.s3 == nil {
			res.item.Type, res.item.Blob = proto.ItemBase64, key
			return res
		}
		u, err := sk.s3.URL(ctx, key)
		if err != nil {
			return collected{err: fmt.Sprintf("Error uploading %s to S3: %v", f.Filename, err)}
		}
		res.item.Type, res.item.Data = proto.ItemS3URL, u
		return res
	}
	ex.log.Warn("store output", zap.String("filename", f.Filename), zap.Bool("fetch_failed", sourceFailed), zap.Error(lastErr))
	switch {
	case sourceFailed:
		return collected{err: fetchFailed}
	case sk.s3 != nil:
		return collected{err: fmt.Sprintf("Error uploading %s to S3: %v", f.Filename, lastErr)}
	}
	return collected{err: fmt.Sprintf("Error storing %s in the blob store: %v", f.Filename, lastErr)}
}

// trackReader remembers its source's first error.
type trackReader struct {
	r   io.Reader
	err error
}

func (t *trackReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err != nil && t.err == nil {
		t.err = err
	}
	return n, err
}

// kindOf sorts an output file into the output's lists: videos (VHS
// "gifs", video files, and animated images, which video nodes such as
// SaveAnimatedWEBP write), audio, images, or other files.
func kindOf(f comfy.File, mt string) string {
	switch {
	case strings.HasPrefix(mt, "video/"), f.Kind == "gifs", f.Kind == "videos", f.Kind == "video", f.Animated:
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
	".txt": "text/plain", ".json": "application/json", ".safetensors": "application/octet-stream",
}

// mimeOf is the content type of a file name.
func mimeOf(name string) string {
	ext := strings.ToLower(path.Ext(name))
	if t, ok := extraTypes[ext]; ok {
		return t
	}
	if t := mime.TypeByExtension(ext); t != "" {
		if mt, _, err := mime.ParseMediaType(t); err == nil {
			return mt
		}
		return t
	}
	return "application/octet-stream"
}
