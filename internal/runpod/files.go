package runpod

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/proto"
)

// fileCSP is the Content-Security-Policy of a served output file. Outputs
// are made by workflows the caller wrote (an SVG, an HTML file, a text),
// and served from the API's own origin: they may show, never run script or
// reach anything.
const fileCSP = "default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'unsafe-inline'; sandbox"

// handleFile answers GET /files/{id}/{name}: one output file of a finished
// job, by the name its output gives it ("subfolder/name" when it has a
// subfolder, or the bare name when that is unique), under the auth and
// tenant rules of /status. A file kept in the blob store is streamed, an
// S3 output is a redirect to its URL, a text output is served as text.
func (a *API) handleFile(w http.ResponseWriter, r *http.Request) {
	id, ok := jobID(w, r)
	if !ok {
		return
	}
	name := r.PathValue("name")
	if name == "" || len(name) > 1024 || strings.ContainsAny(name, "\x00\r\n") {
		WriteError(w, http.StatusBadRequest, fmt.Sprintf("file name %q is empty, too long or holds a control character", proto.Shorten(name)))
		return
	}
	rec, ok := a.record(w, r, id)
	if !ok {
		return
	}
	item, err := outputFile(rec, name)
	if err != nil {
		WriteError(w, http.StatusNotFound, err.Error())
		return
	}
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", fileCSP)
	h.Set("Cache-Control", "private, max-age=3600")
	h.Set("Content-Disposition", mime.FormatMediaType("inline", map[string]string{"filename": item.Filename}))
	switch {
	case item.Type == proto.ItemS3URL:
		h.Del("Content-Disposition")
		http.Redirect(w, r, item.Data, http.StatusTemporaryRedirect)
	case item.Type == proto.ItemText:
		h.Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, item.Data)
	case item.Blob != "":
		body, info, err := a.blobs.Get(r.Context(), item.Blob)
		if errors.Is(err, blob.ErrNotFound) {
			WriteError(w, http.StatusNotFound, fmt.Sprintf("file %s of job %s is no longer stored", item.Filename, id))
			return
		}
		if err != nil {
			a.unavailable(w, "read output file", err)
			return
		}
		defer body.Close()
		h.Set("Content-Type", contentType(item.Mime, info.Mime))
		if info.Size > 0 {
			h.Set("Content-Length", strconv.FormatInt(info.Size, 10))
		}
		if _, err := io.Copy(w, body); err != nil {
			a.log.Debug("send output file", zap.String("job_id", id), zap.Error(err))
		}
	default:
		data, err := base64.StdEncoding.DecodeString(item.Data)
		if err != nil {
			WriteError(w, http.StatusNotFound, fmt.Sprintf("file %s of job %s has no readable content", item.Filename, id))
			return
		}
		h.Set("Content-Type", contentType(item.Mime, ""))
		h.Set("Content-Length", strconv.Itoa(len(data)))
		_, _ = w.Write(data)
	}
}

// contentType is the file's own type, never one a browser would run.
func contentType(types ...string) string {
	for _, t := range types {
		if t != "" {
			return t
		}
	}
	return "application/octet-stream"
}

// outputFile finds the output item a file route names: "subfolder/name"
// names an item with that subfolder, a bare name the one item of that
// name. It says which names exist when the name matches none or several.
func outputFile(rec *proto.Record, name string) (*proto.OutputItem, error) {
	if rec.Status != proto.StatusCompleted || len(rec.Output) == 0 {
		return nil, fmt.Errorf("job %s has no output files: it is %s", rec.ID, rec.Status)
	}
	var out proto.Output
	if err := json.Unmarshal(rec.Output, &out); err != nil {
		return nil, fmt.Errorf("job %s has no output files: its output is its worker's own", rec.ID)
	}
	var all []proto.OutputItem
	for _, list := range [][]proto.OutputItem{out.Images, out.Videos, out.Audio, out.Files, out.Text} {
		all = append(all, list...)
	}
	var match []*proto.OutputItem
	var names []string
	for i := range all {
		it := &all[i]
		full := it.Filename
		if it.Subfolder != "" {
			full = it.Subfolder + "/" + it.Filename
		}
		names = append(names, full)
		if full == name || (it.Filename == name && it.Subfolder != "") {
			match = append(match, it)
		}
	}
	switch {
	case len(match) == 1:
		return match[0], nil
	case len(match) > 1:
		return nil, fmt.Errorf("job %s has %d files named %s: name one as subfolder/name of %s", rec.ID, len(match), name, strings.Join(names, ", "))
	case len(names) == 0:
		return nil, fmt.Errorf("job %s has no output files", rec.ID)
	}
	return nil, fmt.Errorf("job %s has no file named %s; its files: %s", rec.ID, name, strings.Join(names, ", "))
}
