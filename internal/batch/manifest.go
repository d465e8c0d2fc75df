package batch

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/comfyfleet/comfyfleet/proto"
)

// ManifestFile is the name of the manifest inside the output folder.
const ManifestFile = "results.jsonl"

// Result is one line of results.jsonl: what became of one item.
type Result struct {
	Item    string       `json:"item"`
	Index   int          `json:"index"`
	JobID   string       `json:"job_id"`
	BatchID string       `json:"batch_id,omitempty"`
	Status  proto.Status `json:"status"`
	// Error is the job's failure message.
	Error string `json:"error,omitempty"`
	// Files are the job's outputs; Path is set once a file is downloaded.
	Files  []File                     `json:"files"`
	Params map[string]json.RawMessage `json:"params,omitempty"`

	WorkerID    string    `json:"worker_id,omitempty"`
	Attempt     int       `json:"attempt,omitempty"`
	Retries     int       `json:"retries"`
	SubmittedAt time.Time `json:"submitted_at,omitzero"`
	StartedAt   time.Time `json:"started_at,omitzero"`
	FinishedAt  time.Time `json:"finished_at,omitzero"`
	// DelayMS is the time in the queue, ExecutionMS the time running
	// (RunPod's delayTime and executionTime).
	DelayMS     int64 `json:"delay_ms"`
	ExecutionMS int64 `json:"execution_ms"`

	// DownloadError says why some output could not be downloaded; a later
	// run or watch tries again.
	DownloadError string `json:"download_error,omitempty"`
}

// File is one output of a job.
type File struct {
	// Kind is the output list it came from: images, videos, audio, files
	// or text.
	Kind     string `json:"kind"`
	Filename string `json:"filename,omitempty"`
	// Path is where it was downloaded, relative to the output folder
	// (<item>/<filename>); empty when it was not downloaded.
	Path   string `json:"path,omitempty"`
	NodeID string `json:"node_id,omitempty"`
	Mime   string `json:"mime,omitempty"`
	Size   int64  `json:"size,omitempty"`
	// Blob is the blob-store key, URL the S3 (or other) URL of the bytes.
	Blob string `json:"blob,omitempty"`
	URL  string `json:"url,omitempty"`

	// data is an output's inline content: the text of a text output, the
	// base64 of an image kept inline. It is not written to the manifest.
	data string
}

// ResultOf turns a terminal status record into an item's result, without
// downloads.
func ResultOf(rec *proto.Record, item string, index int, params map[string]json.RawMessage) Result {
	r := Result{
		Item: item, Index: index, JobID: rec.ID, BatchID: rec.BatchID, Status: rec.Status, Error: rec.Error,
		Params: params, WorkerID: rec.WorkerID, Attempt: rec.Attempt, Retries: rec.Retries,
		SubmittedAt: rec.SubmittedAt, StartedAt: rec.StartedAt, FinishedAt: rec.FinishedAt,
		DelayMS: rec.DelayTime().Milliseconds(), ExecutionMS: rec.ExecutionTime().Milliseconds(),
		Files: []File{},
	}
	if rec.Status != proto.StatusCompleted || len(rec.Output) == 0 {
		return r
	}
	var out proto.Output
	if err := json.Unmarshal(rec.Output, &out); err != nil {
		r.DownloadError = fmt.Sprintf("read output of job %s: %v", rec.ID, err)
		return r
	}
	add := func(kind string, list []proto.OutputItem) {
		for _, it := range list {
			f := File{Kind: kind, Filename: it.Filename, NodeID: it.NodeID, Mime: it.Mime, Size: it.Size, Blob: it.Blob}
			switch {
			case it.Type == proto.ItemS3URL:
				f.URL = it.Data
			case it.Blob == "":
				f.data = it.Data
			}
			r.Files = append(r.Files, f)
		}
	}
	add("images", out.Images)
	add("videos", out.Videos)
	add("audio", out.Audio)
	add("files", out.Files)
	add("text", out.Text)
	if len(out.Errors) > 0 && r.Error == "" {
		r.Error = fmt.Sprintf("%d output(s) missing: %s", len(out.Errors), out.Errors[0])
	}
	return r
}

// DecodeResult reads one manifest line.
func DecodeResult(line []byte) (Result, error) {
	var r Result
	if err := json.Unmarshal(line, &r); err != nil {
		return Result{}, fmt.Errorf("decode manifest line: %w", err)
	}
	if r.Item == "" || r.JobID == "" {
		return Result{}, errors.New("decode manifest line: item or job_id is missing")
	}
	if !r.Status.Valid() {
		return Result{}, fmt.Errorf("decode manifest line: %q is not a status", r.Status)
	}
	return r, nil
}

// ReadManifest reads a manifest: the last line of each item wins. Lines
// that cannot be read (a line cut short when a run was killed) are
// skipped and counted.
func ReadManifest(r io.Reader) (map[string]Result, int, error) {
	out := map[string]Result{}
	bad := 0
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadBytes('\n')
		if t := bytes.TrimSpace(line); len(t) > 0 {
			res, derr := DecodeResult(t)
			if derr != nil {
				bad++
			} else {
				out[res.Item] = res
			}
		}
		if errors.Is(err, io.EOF) {
			return out, bad, nil
		}
		if err != nil {
			return nil, bad, fmt.Errorf("read manifest: %w", err)
		}
	}
}

// manifest is the output folder's results.jsonl, appended to as items
// finish and rewritten with one line per item, in batch order, at the end
// of a run.
type manifest struct {
	dir     string
	f       *os.File
	results map[string]Result
}

func openManifest(dir string) (*manifest, int, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, 0, fmt.Errorf("create output folder: %w", err)
	}
	m := &manifest{dir: dir, results: map[string]Result{}}
	path := filepath.Join(dir, ManifestFile)
	bad := 0
	if f, err := os.Open(path); err == nil {
		m.results, bad, err = ReadManifest(f)
		f.Close()
		if err != nil {
			return nil, 0, err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, 0, fmt.Errorf("open manifest: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, 0, fmt.Errorf("open manifest: %w", err)
	}
	m.f = f
	return m, bad, nil
}

// add appends r as one line, in one write.
func (m *manifest) add(r Result) error {
	line, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode result of %s: %w", r.Item, err)
	}
	if _, err := m.f.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	m.results[r.Item] = r
	return nil
}

// close rewrites the manifest with one line per item, in index order
// (lines of items the batch no longer has are kept).
func (m *manifest) close() error {
	if m.f == nil {
		return nil
	}
	err := m.f.Close()
	m.f = nil
	if err != nil {
		return fmt.Errorf("close manifest: %w", err)
	}
	all := make([]Result, 0, len(m.results))
	for _, r := range m.results {
		all = append(all, r)
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].Index != all[j].Index {
			return all[i].Index < all[j].Index
		}
		return all[i].Item < all[j].Item
	})
	var b bytes.Buffer
	for _, r := range all {
		line, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("encode result of %s: %w", r.Item, err)
		}
		b.Write(line)
		b.WriteByte('\n')
	}
	path := filepath.Join(m.dir, ManifestFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("rewrite manifest: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rewrite manifest: %w", err)
	}
	return nil
}
