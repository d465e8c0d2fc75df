package jobtake

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"mime"
	"path"
	"strconv"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/proto"
)

// storeOutput moves the bytes of every base64 item of a worker-comfyui
// shaped output ({"images": [{"filename", "type": "base64", "data"}], and
// videos, audio, files likewise) into the blob store, where a gpuworker's
// outputs are, so Redis never holds file bytes; the endpoint API inlines
// them again when it answers. Everything else in the output is kept as
// the worker sent it.
func storeOutput(ctx context.Context, blobs blob.Store, jobID string, attempt int, raw json.RawMessage) (json.RawMessage, error) {
	if !bytes.Contains(raw, []byte(`"base64"`)) {
		return raw, nil
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal(raw, &fields) != nil {
		return raw, nil
	}
	changed := false
	for _, kind := range []string{"images", "videos", "audio", "files"} {
		var items []map[string]json.RawMessage
		if json.Unmarshal(fields[kind], &items) != nil {
			continue
		}
		for i, it := range items {
			var typ, data, name, node string
			_ = json.Unmarshal(it["type"], &typ)
			_ = json.Unmarshal(it["data"], &data)
			_ = json.Unmarshal(it["filename"], &name)
			_ = json.Unmarshal(it["node_id"], &node)
			if typ != proto.ItemBase64 || data == "" {
				continue
			}
			b, err := proto.DecodeImageData(data)
			if err != nil {
				continue // not ours to repair; it stays as sent
			}
			if name == "" {
				name = kind + "-" + strconv.Itoa(i)
			}
			if node == "" {
				node = "runpod"
			}
			key := blob.OutputKey(jobID, attempt, node, path.Base(name))
			info, err := blobs.Put(ctx, key, mime.TypeByExtension(path.Ext(name)), bytes.NewReader(b))
			if err != nil {
				return nil, fmt.Errorf("store output %s: %w", name, err)
			}
			it["data"] = json.RawMessage(`""`)
			it["blob"], _ = json.Marshal(key)
			it["size"], _ = json.Marshal(info.Size)
			changed = true
		}
		if changed {
			fields[kind], _ = json.Marshal(items)
		}
	}
	if !changed {
		return raw, nil
	}
	return json.Marshal(fields)
}
