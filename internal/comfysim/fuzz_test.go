package comfysim

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
)

const fuzzWorkflow = `{"prompt": {
  "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
  "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
  "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
  "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
  "3": {"class_type": "KSampler", "inputs": {"seed": 18446744073709551615, "steps": 2, "cfg": 8, "sampler_name": "euler", "scheduler": "normal", "denoise": 1,
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
  "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
  "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
  "10": {"class_type": "LoadImage", "inputs": {"image": "x.png [output]"}},
  "11": {"class_type": "PreviewAny", "inputs": {"source": {"__value__": [1, 2]}}}
}, "client_id": "c", "prompt_id": "3f0e8c52-9d1b-4f6a-a9b1-2c7e5d4f8a10", "extra_data": {"api_key_comfy_org": "k"}}`

// newFuzzServer is an emulator whose executor never runs what the fuzzer
// queues (a mutated prompt could ask for a 16384x16384 image).
func newFuzzServer(t testing.TB) (*Server, http.Handler) {
	s, err := New(Config{Dir: t.TempDir(), StepDelay: -1})
	require.NoError(t, err)
	s.mu.Lock()
	s.holdQueue = true
	s.mu.Unlock()
	t.Cleanup(func() { _ = s.Close() })
	return s, s.Handler()
}

func isReason(m map[string]any) bool {
	for _, k := range []string{"type", "message", "details"} {
		if _, ok := m[k].(string); !ok {
			return false
		}
	}
	_, ok := m["extra_info"].(map[string]any)
	return ok
}

// FuzzPostPrompt feeds arbitrary bodies to POST /prompt: it must never panic
// and must answer 200 or 400 with ComfyUI's JSON shapes, or 500 with aiohttp's
// plain-text page where ComfyUI itself raises (invalid JSON, non-dict nodes...).
func FuzzPostPrompt(f *testing.F) {
	f.Add([]byte(fuzzWorkflow))
	f.Add([]byte(`{"prompt": {}}`))
	f.Add([]byte(`{"prompt": {"1": {"class_type": "SaveImage", "inputs": {"images": [1, 0]}}}}`))
	f.Add([]byte(`{"prompt": {"1": {"inputs": {}, "_meta": {"title": 5}}}}`))
	f.Add([]byte(`{"prompt": {"1": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}, "number": "7"}`))
	f.Add([]byte(`{"prompt": {"1": {"class_type": "PreviewAny", "inputs": {"source": ["2", -1]}}, "2": {"class_type": "LoadImage", "inputs": {"image": ["1", true]}}}, "partial_execution_targets": "12"}`))
	f.Add([]byte(`["number"]`))
	f.Add([]byte(`"prompt"`))
	f.Add([]byte(`{"prompt": {"1": {"class_type": "KSampler", "inputs": {"seed": NaN, "steps": "1_0", "cfg": Infinity}}}, "front": 1}`))
	s, h := newFuzzServer(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/prompt", bytes.NewReader(body))
		h.ServeHTTP(rec, req)
		s.mu.Lock()
		s.queue = nil // keep the held queue small
		s.mu.Unlock()
		switch rec.Code {
		case http.StatusInternalServerError:
			require.Equal(t, "500 Internal Server Error\n\nServer got itself in trouble", rec.Body.String())
			return
		case http.StatusOK, http.StatusBadRequest:
		default:
			t.Fatalf("status %d", rec.Code)
		}
		// Python may emit NaN/Infinity tokens inside echoed values; parse
		// with our own decoder, which accepts them.
		v, err := pyvalue.Decode(rec.Body.Bytes())
		require.NoError(t, err, "body %q", rec.Body.String())
		raw := pyvalue.Encode(v)
		norm := strings.NewReplacer("-Infinity", "null", "Infinity", "null", "NaN", "null").Replace(string(raw))
		var m map[string]any
		if err := json.Unmarshal([]byte(norm), &m); err != nil {
			return // a string value happened to contain a replaced word; the pyvalue parse above is the check
		}
		ne, ok := m["node_errors"].(map[string]any)
		require.True(t, ok, "node_errors must be an object: %s", rec.Body.String())
		for id, v := range ne {
			e, ok := v.(map[string]any)
			require.True(t, ok, id)
			_, hasDeps := e["dependent_outputs"].([]any)
			require.True(t, hasDeps)
			errs, ok := e["errors"].([]any)
			require.True(t, ok)
			for _, r := range errs {
				rm, ok := r.(map[string]any)
				require.True(t, ok && isReason(rm), "reason %v", r)
			}
		}
		if rec.Code == http.StatusOK {
			_, ok := m["prompt_id"].(string)
			require.True(t, ok)
			_, ok = m["number"].(float64)
			require.True(t, ok)
			return
		}
		e, ok := m["error"].(map[string]any)
		require.True(t, ok && isReason(e), "error %v", m["error"])
	})
}

// FuzzView feeds arbitrary query strings to GET /view.
func FuzzView(f *testing.F) {
	f.Add("filename=x.png&subfolder=a&type=output")
	f.Add("filename=..%2Fx&type=input")
	f.Add("filename=a.png%20%5Boutput%5D&preview=jpeg;0&channel=a")
	f.Add("filename=&subfolder=%2Fetc")
	_, h := newFuzzServer(f)
	f.Fuzz(func(t *testing.T, query string) {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "/view", nil)
		req.URL.RawQuery = query
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusOK, http.StatusBadRequest, http.StatusForbidden, http.StatusNotFound, http.StatusInternalServerError:
		default:
			t.Fatalf("status %d for %q", rec.Code, query)
		}
	})
}

// FuzzUpload feeds arbitrary multipart bodies to POST /upload/image.
func FuzzUpload(f *testing.F) {
	const boundary = "XyZ"
	f.Add([]byte("--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\nabc\r\n--XyZ\r\nContent-Disposition: form-data; name=\"subfolder\"\r\n\r\nsub\r\n--XyZ--\r\n"))
	f.Add([]byte("--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"../a.png\"\r\n\r\nabc\r\n--XyZ\r\nContent-Disposition: form-data; name=\"type\"\r\n\r\ntemp\r\n--XyZ--\r\n"))
	_, h := newFuzzServer(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/upload/image", bytes.NewReader(body))
		req.Header.Set("Content-Type", "multipart/form-data; boundary="+boundary)
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusOK:
			var m map[string]any
			require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &m))
			require.Contains(t, m, "name")
		case http.StatusBadRequest, http.StatusInternalServerError:
		default:
			t.Fatalf("status %d", rec.Code)
		}
	})
}
