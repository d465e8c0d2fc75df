package comfy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/ssrf"
)

// SystemStats is GET /system_stats (protocol §9).
type SystemStats struct {
	OS             string
	ComfyUIVersion string // "0.27.0"; older servers: "v0.3.10-5-gabc123" or "unknown"
	PythonVersion  string
	PyTorchVersion string
	RAMTotal       int64
	RAMFree        int64
	Devices        []Device
	Raw            json.RawMessage
}

// Device is one compute device, primary first.
type Device struct {
	Name      string
	Type      string // "cuda", "cpu", "mps", …
	Index     *int64 // nil for the CPU
	VRAMTotal int64
	VRAMFree  int64
}

// SystemStats reads GET /system_stats; it doubles as the liveness probe.
func (c *Client) SystemStats(ctx context.Context) (*SystemStats, error) {
	body, err := c.call(ctx, http.MethodGet, "/system_stats", nil, nil)
	if err != nil {
		return nil, fmt.Errorf("get system stats: %w", err)
	}
	var top map[string]json.RawMessage
	if err := unmarshalLenient(body, &top); err != nil || top == nil {
		return nil, fmt.Errorf("get system stats: undecodable answer %q", truncate(body, 512))
	}
	sys := objectMap(top["system"])
	s := &SystemStats{
		OS:             rawString(sys["os"]),
		ComfyUIVersion: rawString(sys["comfyui_version"]),
		PythonVersion:  rawString(sys["python_version"]),
		PyTorchVersion: rawString(sys["pytorch_version"]),
		RAMTotal:       rawInt(sys["ram_total"]),
		RAMFree:        rawInt(sys["ram_free"]),
		Raw:            body,
	}
	for _, el := range arrayElems(top["devices"]) {
		d := objectMap(el)
		dev := Device{Name: rawString(d["name"]), Type: rawString(d["type"]),
			VRAMTotal: rawInt(d["vram_total"]), VRAMFree: rawInt(d["vram_free"])}
		if k := jsonKind(d["index"]); k == '-' || (k >= '0' && k <= '9') {
			i := rawInt(d["index"])
			dev.Index = &i
		}
		s.Devices = append(s.Devices, dev)
	}
	return s, nil
}

// Upload is ComfyUI's answer to an upload. Refer to the file in a workflow
// as Name, or Subfolder + "/" + Name.
type Upload struct {
	Name      string `json:"name"` // the stored name: ComfyUI renames on a clash unless overwriting
	Subfolder string `json:"subfolder"`
	Type      string `json:"type"`
}

// UploadImage streams r to POST /upload/image as the multipart field
// "image" with the given content type (images, videos and audio all go
// this way), into the input folder's subfolder ("" for its root). Without
// overwrite ComfyUI keeps an existing file of the same name and content,
// or stores the new one as "name (1).ext".
func (c *Client) UploadImage(ctx context.Context, name, subfolder string, r io.Reader, contentType string, overwrite bool) (*Upload, error) {
	if name == "" {
		return nil, fmt.Errorf("upload: empty file name")
	}
	if contentType == "" {
		contentType = "application/octet-stream"
	}
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	written := make(chan struct{})
	var writeErr error // set before written is closed
	go func() {
		defer close(written)
		writeErr = func() error {
			if err := mw.WriteField("overwrite", fmt.Sprint(overwrite)); err != nil {
				return err
			}
			if subfolder != "" {
				if err := mw.WriteField("subfolder", subfolder); err != nil {
					return err
				}
			}
			h := textproto.MIMEHeader{}
			h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="image"; filename="%s"`, quoteEscaper.Replace(name)))
			h.Set("Content-Type", contentType)
			part, err := mw.CreatePart(h)
			if err != nil {
				return err
			}
			if _, err := io.Copy(part, r); err != nil {
				return err
			}
			return mw.Close()
		}()
		pw.CloseWithError(writeErr)
	}()
	// The request may end before the body was consumed: unblock the writer
	// and wait for it, so r is not read after we return.
	stopWriter := func() {
		_ = pr.CloseWithError(io.ErrClosedPipe)
		<-written
	}
	defer stopWriter()

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint("/upload/image", nil), pr)
	if err != nil {
		return nil, fmt.Errorf("upload %s: %w", name, err)
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := c.do(ctx, req)
	if err != nil {
		stopWriter()
		if writeErr != nil && !errors.Is(writeErr, io.ErrClosedPipe) && ctx.Err() == nil {
			// The input failed, not ComfyUI.
			return nil, fmt.Errorf("upload %s: read input: %w", name, writeErr)
		}
		return nil, fmt.Errorf("upload %s: %w", name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxErrBody))
	if err != nil {
		return nil, fmt.Errorf("upload %s: read answer: %w", name, ssrf.WithoutAddresses(err))
	}
	var up Upload
	if err := unmarshalLenient(body, &up); err != nil || up.Name == "" {
		return nil, fmt.Errorf("upload %s: undecodable answer %q", name, truncate(body, 512))
	}
	return &up, nil
}

var quoteEscaper = strings.NewReplacer("\\", "\\\\", `"`, "\\\"", "\r", "", "\n", "")

// History reads GET /history/{id}. ok is false when ComfyUI has no entry,
// which means unknown, evicted, or not finished yet: ComfyUI cannot tell
// them apart (check Queue).
func (c *Client) History(ctx context.Context, promptID string) (entry *HistoryEntry, ok bool, err error) {
	body, err := c.call(ctx, http.MethodGet, "/history/"+url.PathEscape(promptID), nil, nil)
	if err != nil {
		return nil, false, fmt.Errorf("get history %s: %w", promptID, err)
	}
	var top map[string]json.RawMessage
	if err := unmarshalLenient(body, &top); err != nil {
		return nil, false, fmt.Errorf("get history %s: %w", promptID, err)
	}
	raw, found := top[promptID]
	if !found {
		return nil, false, nil
	}
	entry, err = decodeHistoryEntry(raw)
	if err != nil {
		return nil, false, fmt.Errorf("get history %s: %w", promptID, err)
	}
	return entry, true, nil
}

// Queue reads GET /queue, pending prompts sorted in execution order.
func (c *Client) Queue(ctx context.Context) (*QueueState, error) {
	body, err := c.call(ctx, http.MethodGet, "/queue", nil, nil)
	if err != nil {
		return nil, fmt.Errorf("get queue: %w", err)
	}
	q, err := decodeQueue(body)
	if err != nil {
		return nil, fmt.Errorf("get queue: %w", err)
	}
	return q, nil
}

// View streams a file from GET /view; the caller closes it. A missing file
// is an error matching fs.ErrNotExist. Only ctx bounds the transfer.
func (c *Client) View(ctx context.Context, ref FileRef) (io.ReadCloser, error) {
	q := url.Values{"filename": {ref.Filename}, "type": {ref.Type}}
	if ref.Type == "" {
		q.Set("type", "output")
	}
	if ref.Subfolder != "" {
		q.Set("subfolder", ref.Subfolder)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.endpoint("/view", q), nil)
	if err != nil {
		return nil, fmt.Errorf("view %s: %w", ref.Filename, err)
	}
	resp, err := c.do(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("view %s: %w", ref.Filename, err)
	}
	return resp.Body, nil
}

// Interrupt stops promptID if it is the one running (POST /interrupt with
// {"prompt_id"}); it does nothing to a pending prompt (see Cancel). An
// empty promptID interrupts whatever runs, even another client's prompt.
func (c *Client) Interrupt(ctx context.Context, promptID string) error {
	body := []byte(`{}`)
	if promptID != "" {
		body, _ = json.Marshal(map[string]string{"prompt_id": promptID})
	}
	if _, err := c.call(ctx, http.MethodPost, "/interrupt", nil, body); err != nil {
		return fmt.Errorf("interrupt %s: %w", promptID, err)
	}
	return nil
}

// DeleteFromQueue removes pending prompts (POST /queue {"delete"}); a
// running prompt is not affected. A Wait on a removed prompt ends with an
// *InterruptedError whose Removed is set.
func (c *Client) DeleteFromQueue(ctx context.Context, promptIDs ...string) error {
	if len(promptIDs) == 0 {
		return nil
	}
	ws := c.markRemoved(promptIDs, true)
	body, _ := json.Marshal(map[string][]string{"delete": promptIDs})
	if _, err := c.call(ctx, http.MethodPost, "/queue", nil, body); err != nil {
		c.markRemoved(promptIDs, false)
		return fmt.Errorf("delete from queue: %w", err)
	}
	// No WebSocket message tells that a pending prompt was removed: make
	// its waiter ask.
	for _, w := range ws {
		w.push(event{kind: evReconcile})
	}
	return nil
}

// markRemoved sets or clears the removed flag of the given prompts'
// waiters and returns them.
func (c *Client) markRemoved(ids []string, removed bool) []*waiter {
	c.mu.Lock()
	var ws []*waiter
	for _, id := range ids {
		if w := c.waiters[id]; w != nil {
			ws = append(ws, w)
		}
	}
	c.mu.Unlock()
	for _, w := range ws {
		w.mu.Lock()
		w.removed = removed
		w.mu.Unlock()
	}
	return ws
}

// Cancel stops a prompt wherever it is: removed if pending, interrupted if
// running (ComfyUI's POST /api/jobs/{id}/cancel does the same, but only
// from v0.26). Deleting first leaves no gap: a prompt that starts between
// the two calls is interrupted.
func (c *Client) Cancel(ctx context.Context, promptID string) error {
	if promptID == "" {
		return fmt.Errorf("cancel: empty prompt id")
	}
	if err := c.DeleteFromQueue(ctx, promptID); err != nil {
		return fmt.Errorf("cancel %s: %w", promptID, err)
	}
	if err := c.Interrupt(ctx, promptID); err != nil {
		return fmt.Errorf("cancel %s: %w", promptID, err)
	}
	return nil
}

// Free asks ComfyUI to unload models and, with freeMemory, also to drop its
// caches (the next identical prompt then runs again). It acts after the
// running prompt, or at once when idle.
func (c *Client) Free(ctx context.Context, unloadModels, freeMemory bool) error {
	body, _ := json.Marshal(map[string]bool{"unload_models": unloadModels, "free_memory": freeMemory})
	if _, err := c.call(ctx, http.MethodPost, "/free", nil, body); err != nil {
		return fmt.Errorf("free: %w", err)
	}
	return nil
}

// NodeInfo is one node class from GET /object_info.
type NodeInfo struct {
	Name        string
	DisplayName string
	Category    string
	// Required and Optional are the input specs, raw: [type, {options}],
	// or [[choices…], {options}] for a combo.
	Required   map[string]json.RawMessage
	Optional   map[string]json.RawMessage
	Output     []string
	OutputNode bool
	Raw        json.RawMessage
}

// Options returns the choices of a combo input (e.g. the installed models
// of a loader's ckpt_name); ok is false when the input is not a combo.
func (n NodeInfo) Options(input string) (opts []string, ok bool) {
	spec, found := n.Required[input]
	if !found {
		spec = n.Optional[input]
	}
	return comboOptions(spec)
}

// ObjectInfo reads GET /object_info/{class}, or every class when class is
// "". An unknown class gives an empty map.
func (c *Client) ObjectInfo(ctx context.Context, class string) (map[string]NodeInfo, error) {
	path := "/object_info"
	if class != "" {
		path += "/" + url.PathEscape(class)
	}
	body, err := c.call(ctx, http.MethodGet, path, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("get object info %s: %w", class, err)
	}
	var top map[string]json.RawMessage
	if err := unmarshalLenient(body, &top); err != nil {
		return nil, fmt.Errorf("get object info %s: %w", class, err)
	}
	out := make(map[string]NodeInfo, len(top))
	for name, raw := range top {
		m := objectMap(raw)
		if m == nil {
			c.log.Debug("skipping undecodable node info", zap.String("class", name))
			continue
		}
		in := objectMap(m["input"])
		out[name] = NodeInfo{
			Name:        name,
			DisplayName: rawString(m["display_name"]),
			Category:    rawString(m["category"]),
			Required:    objectMap(in["required"]),
			Optional:    objectMap(in["optional"]),
			Output:      rawStrings(m["output"]),
			OutputNode:  rawBool(m["output_node"]),
			Raw:         raw,
		}
	}
	return out, nil
}

// InputOptions lists the choices of one combo input of a class, e.g.
// InputOptions(ctx, "CheckpointLoaderSimple", "ckpt_name") for the
// installed checkpoints.
func (c *Client) InputOptions(ctx context.Context, class, input string) ([]string, error) {
	infos, err := c.ObjectInfo(ctx, class)
	if err != nil {
		return nil, err
	}
	info, ok := infos[class]
	if !ok {
		return nil, fmt.Errorf("input options %s.%s: unknown node class", class, input)
	}
	opts, ok := info.Options(input)
	if !ok {
		return nil, fmt.Errorf("input options %s.%s: not a combo input", class, input)
	}
	return opts, nil
}
