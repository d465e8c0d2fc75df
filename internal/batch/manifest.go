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
	Item  string `json:"item"`
	Index int    `json:"index"`
	JobID string `json:"job_id"`
	// Try counts the item's jobs: 1 for its first, 2 for the job that
	// --retry-failed or --retry-cancelled sent after it (its id ends in
	// -r2), and so on. 0 in a line written before tries were counted
	// means 1.
	Try     int          `json:"try"`
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
// downloads, as its first try (the caller sets Try of a later one).
func ResultOf(rec *proto.Record, item string, index int, params map[string]json.RawMessage) Result {
	r := Result{
		Item: item, Index: index, JobID: rec.ID, Try: 1, BatchID: rec.BatchID, Status: rec.Status, Error: rec.Error,
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
	if r.Try < 0 {
		return Result{}, fmt.Errorf("decode manifest line: try %d is negative", r.Try)
	}
	r.Try = max(r.Try, 1)
	return r, nil
}

// ReadManifest reads a manifest: the last line of each item wins, which
// is the result of its latest job. Lines that cannot be read (a line cut
// short when a run was killed) are skipped and counted.
func ReadManifest(r io.Reader) (map[string]Result, int, error) {
	h, bad, err := ReadHistory(r)
	if err != nil {
		return nil, bad, err
	}
	out := make(map[string]Result, len(h))
	for item, results := range h {
		out[item] = results[len(results)-1]
	}
	return out, bad, nil
}

// ReadHistory reads a manifest with every job of each item: one result
// per job, the last line of a job winning, in the order of their last
// lines, so that the last is the item's latest job (what ReadManifest
// gives). Lines that cannot be read are skipped and counted.
func ReadHistory(r io.Reader) (map[string][]Result, int, error) {
	h := history{}
	bad := 0
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadBytes('\n')
		if t := bytes.TrimSpace(line); len(t) > 0 {
			res, derr := DecodeResult(t)
			if derr != nil {
				bad++
			} else {
				h.add(res)
			}
		}
		if errors.Is(err, io.EOF) {
			return h, bad, nil
		}
		if err != nil {
			return nil, bad, fmt.Errorf("read manifest: %w", err)
		}
	}
}

// history is every job of each item, the latest last.
type history map[string][]Result

// add makes r its item's latest result, replacing an earlier one of the
// same job.
func (h history) add(r Result) {
	list := h[r.Item]
	for i := range list {
		if list[i].JobID == r.JobID {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	h[r.Item] = append(list, r)
}

// latest is the result of the item's latest job.
func (h history) latest(item string) (Result, bool) {
	list := h[item]
	if len(list) == 0 {
		return Result{}, false
	}
	return list[len(list)-1], true
}

// job is the item's result of one job.
func (h history) job(item, jobID string) (Result, bool) {
	for _, r := range h[item] {
		if r.JobID == jobID {
			return r, true
		}
	}
	return Result{}, false
}

// manifest is the output folder's results.jsonl, appended to as items
// finish and rewritten at the end of a run with one line per job of each
// item, the items in batch order and each item's latest job last.
type manifest struct {
	dir     string
	f       *os.File
	results history
}

func openManifest(dir string) (*manifest, int, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, 0, fmt.Errorf("create output folder: %w", err)
	}
	m := &manifest{dir: dir, results: history{}}
	path := filepath.Join(dir, ManifestFile)
	bad := 0
	if f, err := os.Open(path); err == nil {
		m.results, bad, err = ReadHistory(f)
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

// reindex gives every line of the item its position in this run's batch
// (a sweep that grew in front moves its items), for the rewrite's order.
func (m *manifest) reindex(item string, index int) {
	for i := range m.results[item] {
		m.results[item][i].Index = index
	}
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
	m.results.add(r)
	return nil
}

// close rewrites the manifest with one line per job of each item, the
// items in index order (those the batch no longer has are kept) and each
// item's jobs in the order of their results, the latest last; then the
// contact sheet and the CSV of the items' latest jobs beside it.
func (m *manifest) close() error {
	if m.f == nil {
		return nil
	}
	err := m.f.Close()
	m.f = nil
	if err != nil {
		return fmt.Errorf("close manifest: %w", err)
	}
	items := make([]string, 0, len(m.results))
	index := make(map[string]int, len(m.results))
	for item := range m.results {
		items = append(items, item)
		r, _ := m.results.latest(item)
		index[item] = r.Index
	}
	sort.Slice(items, func(i, j int) bool {
		if index[items[i]] != index[items[j]] {
			return index[items[i]] < index[items[j]]
		}
		return items[i] < items[j]
	})
	var b bytes.Buffer
	for _, item := range items {
		for _, r := range m.results[item] {
			line, err := json.Marshal(r)
			if err != nil {
				return fmt.Errorf("encode result of %s: %w", r.Item, err)
			}
			b.Write(line)
			b.WriteByte('\n')
		}
	}
	path := filepath.Join(m.dir, ManifestFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("rewrite manifest: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rewrite manifest: %w", err)
	}
	latest := make([]Result, 0, len(items))
	for _, item := range items {
		r, _ := m.results.latest(item)
		latest = append(latest, r)
	}
	return writeSheets(m.dir, m.batchID(latest), latest)
}

// batchID is the batch the results belong to, for the contact sheet's
// title: their batch id, or the folder's name.
func (m *manifest) batchID(rs []Result) string {
	for _, r := range rs {
		if r.BatchID != "" {
			return r.BatchID
		}
	}
	return filepath.Base(m.dir)
}
