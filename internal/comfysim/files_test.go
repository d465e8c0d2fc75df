package comfysim_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
)

// runImage runs wf without a client and returns the first image entry.
func (h *harness) runImage(wf workflow) map[string]any {
	h.t.Helper()
	pid := newID()
	h.submit(body(wf.json(), "", pid))
	e := h.history(pid)
	require.Equal(h.t, "success", obj(h.t, e, "status")["status_str"], "%v", e["status"])
	imgs := obj(h.t, e, "outputs", "9")["images"].([]any)
	return imgs[0].(map[string]any)
}

func viewPath(ref map[string]any) string {
	q := url.Values{"filename": {ref["filename"].(string)}, "subfolder": {ref["subfolder"].(string)}, "type": {ref["type"].(string)}}
	return "/view?" + q.Encode()
}

func (h *harness) fetchPNG(ref map[string]any) (image.Image, []byte) {
	h.t.Helper()
	st, b, hdr := h.do(http.MethodGet, viewPath(ref), "", nil)
	require.Equal(h.t, http.StatusOK, st)
	require.Equal(h.t, "image/png", hdr.Get("Content-Type"))
	img, err := png.Decode(bytes.NewReader(b))
	require.NoError(h.t, err)
	return img, b
}

func samePixels(a, b image.Image) bool {
	if a.Bounds() != b.Bounds() {
		return false
	}
	for y := a.Bounds().Min.Y; y < a.Bounds().Max.Y; y++ {
		for x := a.Bounds().Min.X; x < a.Bounds().Max.X; x++ {
			if color.NRGBAModel.Convert(a.At(x, y)) != color.NRGBAModel.Convert(b.At(x, y)) {
				return false
			}
		}
	}
	return true
}

func TestSavedPNGDependsOnInputs(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	base := workflow{w: 96, h: 72, seed: "1"}
	img1, raw1 := h.fetchPNG(h.runImage(base))
	require.Equal(t, image.Rect(0, 0, 96, 72), img1.Bounds())

	otherSeed := base
	otherSeed.seed = "2"
	img2, _ := h.fetchPNG(h.runImage(otherSeed))
	require.False(t, samePixels(img1, img2), "different seeds give different pixels")

	otherText := base
	otherText.text = "a dog"
	img3, _ := h.fetchPNG(h.runImage(otherText))
	require.False(t, samePixels(img1, img3), "different prompts give different pixels")

	// Deterministic: the same inputs after a cache reset give the same pixels.
	st, _ := h.post("/free", `{"free_memory": true}`)
	require.Equal(t, http.StatusOK, st)
	ref := h.runImage(base)
	require.Equal(t, "ComfyUI_00004_.png", ref["filename"], "re-executed after /free, so a new file")
	img4, _ := h.fetchPNG(ref)
	require.True(t, samePixels(img1, img4))

	// ComfyUI's metadata: a tEXt "prompt" chunk with the prompt as JSON.
	require.Contains(t, string(raw1), "tEXtprompt\x00{")
}

func TestSaveImageCounterAndSubfolder(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	require.Equal(t, "ComfyUI_00001_.png", h.runImage(workflow{seed: "1"})["filename"])
	require.Equal(t, "ComfyUI_00002_.png", h.runImage(workflow{seed: "2"})["filename"])

	// Gaps are never filled: the counter is max+1 of the files present.
	out := filepath.Join(h.sim.Dir(), "output")
	require.NoError(t, os.WriteFile(filepath.Join(out, "ComfyUI_00041_.png"), []byte("x"), 0o644))
	require.Equal(t, "ComfyUI_00042_.png", h.runImage(workflow{seed: "3"})["filename"])

	// Batches count up within one execution.
	pid := newID()
	h.submit(body(workflow{seed: "4", batch: 2, prefix: "sub/dir/pic"}.json(), "", pid))
	imgs := obj(t, h.history(pid), "outputs", "9")["images"].([]any)
	require.Equal(t, []any{
		map[string]any{"filename": "pic_00001_.png", "subfolder": "sub/dir", "type": "output"},
		map[string]any{"filename": "pic_00002_.png", "subfolder": "sub/dir", "type": "output"},
	}, imgs)
	img, _ := h.fetchPNG(imgs[1].(map[string]any))
	require.Equal(t, 64, img.Bounds().Dx())

	// %width% is expanded by the server, %date:...% is not.
	require.Equal(t, "w64_%date:yyyy%_00001_.png", h.runImage(workflow{seed: "5", prefix: "w%width%_%date:yyyy%"})["filename"])

	// Escaping the output folder is an execution_error.
	pid = newID()
	h.submit(body(workflow{seed: "6", prefix: "../evil"}.json(), "", pid))
	st := obj(t, h.history(pid), "status")
	require.Equal(t, "error", st["status_str"])
	ms := st["messages"].([]any)
	last := ms[len(ms)-1].([]any)
	require.Equal(t, "execution_error", last[0])
	data := last[1].(map[string]any)
	require.Equal(t, "Exception", data["exception_type"])
	require.True(t, strings.HasPrefix(data["exception_message"].(string), "**** ERROR: Saving image outside the output folder is not allowed."))
	require.True(t, strings.HasSuffix(data["exception_message"].(string), "\n"))
}

func TestPreviewImageWritesTemp(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	ref := h.runImage(workflow{saveClass: "PreviewImage"})
	require.Equal(t, "temp", ref["type"])
	require.Regexp(t, `^ComfyUI_temp_[a-z]{5}_00001_\.png$`, ref["filename"])
	h.fetchPNG(ref)
	// The node object (and its suffix) is reused by the next prompt.
	ref2 := h.runImage(workflow{saveClass: "PreviewImage", seed: "9"})
	require.Equal(t, ref["filename"].(string)[:19]+"00002_.png", ref2["filename"])
}

func upload(t *testing.T, h *harness, filename string, data []byte, fields map[string]string) (int, map[string]any) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	if filename != "-" {
		fw, err := mw.CreateFormFile("image", filename)
		require.NoError(t, err)
		_, _ = fw.Write(data)
	}
	for k, v := range fields {
		require.NoError(t, mw.WriteField(k, v))
	}
	require.NoError(t, mw.Close())
	st, b, _ := h.do(http.MethodPost, "/upload/image", mw.FormDataContentType(), &buf)
	if st != http.StatusOK {
		return st, nil
	}
	return st, decode(t, b)
}

func pngBytes(t *testing.T, w, hgt int, c color.NRGBA) []byte {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, hgt))
	for i := 0; i < len(img.Pix); i += 4 {
		img.Pix[i], img.Pix[i+1], img.Pix[i+2], img.Pix[i+3] = c.R, c.G, c.B, c.A
	}
	var b bytes.Buffer
	require.NoError(t, png.Encode(&b, img))
	return b.Bytes()
}

func TestUploadImage(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	red := pngBytes(t, 20, 10, color.NRGBA{255, 0, 0, 255})
	blue := pngBytes(t, 20, 10, color.NRGBA{0, 0, 255, 255})

	st, m := upload(t, h, "cat.png", red, nil)
	require.Equal(t, http.StatusOK, st)
	require.Equal(t, map[string]any{"name": "cat.png", "subfolder": "", "type": "input"}, m)
	_, m = upload(t, h, "cat.png", red, nil)
	require.Equal(t, "cat.png", m["name"], "same content reuses the name")
	_, m = upload(t, h, "cat.png", blue, nil)
	require.Equal(t, "cat (1).png", m["name"])
	_, m = upload(t, h, "cat.png", pngBytes(t, 3, 3, color.NRGBA{1, 2, 3, 255}), nil)
	require.Equal(t, "cat (2).png", m["name"])
	_, m = upload(t, h, "cat.png", blue, map[string]string{"overwrite": "true"})
	require.Equal(t, "cat.png", m["name"])
	got, err := os.ReadFile(filepath.Join(h.sim.Dir(), "input", "cat.png"))
	require.NoError(t, err)
	require.Equal(t, blue, got)

	_, m = upload(t, h, "dog.png", red, map[string]string{"subfolder": "pets"})
	require.Equal(t, map[string]any{"name": "dog.png", "subfolder": "pets", "type": "input"}, m)
	_, m = upload(t, h, "t.png", red, map[string]string{"type": "temp"})
	require.Equal(t, "temp", m["type"])

	st, _ = upload(t, h, "x.png", red, map[string]string{"type": "bogus"})
	require.Equal(t, http.StatusInternalServerError, st)
	st, _ = upload(t, h, "-", nil, nil)
	require.Equal(t, http.StatusBadRequest, st)
	st, _ = upload(t, h, "x.png", red, map[string]string{"subfolder": "../.."})
	require.Equal(t, http.StatusBadRequest, st)
	st, _ = upload(t, h, "-", nil, map[string]string{"image": "not a file"})
	require.Equal(t, http.StatusInternalServerError, st)

	// LoadImage's combo lists root files; a subfolder path still validates.
	_, info := h.get("/object_info/LoadImage")
	opts := obj(t, decode(t, info), "LoadImage", "input", "required")["image"].([]any)[0]
	require.Equal(t, []any{"cat (1).png", "cat (2).png", "cat.png"}, opts)

	pid := newID()
	h.submit(body(`{"1": {"class_type": "LoadImage", "inputs": {"image": "pets/dog.png"}},
		"9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "loaded"}}}`, "", pid))
	e := h.history(pid)
	ref := obj(t, e, "outputs", "9")["images"].([]any)[0].(map[string]any)
	img, _ := h.fetchPNG(ref)
	want, err := png.Decode(bytes.NewReader(red))
	require.NoError(t, err)
	require.True(t, samePixels(want, img), "LoadImage -> SaveImage keeps the pixels")

	// Re-uploading different content under an overwritten name re-runs LoadImage (IS_CHANGED).
	_, m = upload(t, h, "dog.png", blue, map[string]string{"subfolder": "pets", "overwrite": "1"})
	require.Equal(t, "dog.png", m["name"])
	pid = newID()
	h.submit(body(`{"1": {"class_type": "LoadImage", "inputs": {"image": "pets/dog.png"}},
		"9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "loaded"}}}`, "", pid))
	ref = obj(t, h.history(pid), "outputs", "9")["images"].([]any)[0].(map[string]any)
	require.Equal(t, "loaded_00002_.png", ref["filename"])
}

// TestUploadEmptyFileOverwrites: real ComfyUI has no route that deletes
// an input file; what a client can do is overwrite one with an empty file
// (overwrite=true writes the part as it came, whatever its size, as
// server.py's image_upload does). Without overwrite the empty file is new
// content under a taken name, so it gets the next free name.
func TestUploadEmptyFileOverwrites(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	require.Equal(t, filepath.Join(h.sim.Dir(), "input"), h.sim.InputDir())
	red := pngBytes(t, 4, 4, color.NRGBA{255, 0, 0, 255})
	file := filepath.Join(h.sim.InputDir(), "jobs", "j1", "x.png")

	_, m := upload(t, h, "x.png", red, map[string]string{"subfolder": "jobs/j1", "overwrite": "true"})
	require.Equal(t, map[string]any{"name": "x.png", "subfolder": "jobs/j1", "type": "input"}, m)
	st, m := upload(t, h, "x.png", nil, map[string]string{"subfolder": "jobs/j1"})
	require.Equal(t, http.StatusOK, st)
	require.Equal(t, "x (1).png", m["name"], "without overwrite an empty file is new content")
	got, err := os.ReadFile(file)
	require.NoError(t, err)
	require.Equal(t, red, got)

	st, m = upload(t, h, "x.png", nil, map[string]string{"subfolder": "jobs/j1", "overwrite": "true"})
	require.Equal(t, http.StatusOK, st)
	require.Equal(t, map[string]any{"name": "x.png", "subfolder": "jobs/j1", "type": "input"}, m)
	fi, err := os.Stat(file)
	require.NoError(t, err)
	require.Zero(t, fi.Size(), "the bytes are gone, the file stays")

	// The empty file still validates (it exists) and fails when loaded.
	pid := newID()
	h.submit(body(`{"1": {"class_type": "LoadImage", "inputs": {"image": "jobs/j1/x.png"}},
		"9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "e"}}}`, "", pid))
	status := obj(t, h.history(pid), "status")
	require.Equal(t, "error", status["status_str"])
	require.Contains(t, fmt.Sprint(status["messages"]), "cannot identify image file")
}

func TestViewStatusCodes(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	ref := h.runImage(workflow{prefix: "sub/pic"})
	require.Equal(t, "sub", ref["subfolder"])
	require.NoError(t, os.WriteFile(filepath.Join(h.sim.Dir(), "output", "page.html"), []byte("<script>"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(h.sim.Dir(), "output", "data.bin"), []byte("0123456789"), 0o644))

	tests := []struct {
		query  string
		status int
		ctype  string
	}{
		{"", http.StatusNotFound, ""},
		{"filename=", http.StatusBadRequest, ""},
		{"filename=../x.png", http.StatusBadRequest, ""},
		{"filename=/etc/passwd", http.StatusBadRequest, ""},
		{"filename=pic_00001_.png&subfolder=sub&type=bogus", http.StatusBadRequest, ""},
		{"filename=pic_00001_.png&subfolder=../..", http.StatusForbidden, ""},
		{"filename=nope.png", http.StatusNotFound, ""},
		{"filename=pic_00001_.png&subfolder=sub", http.StatusOK, "image/png"},
		{"filename=pic_00001_.png&subfolder=sub&type=output", http.StatusOK, "image/png"},
		{"filename=" + url.QueryEscape("pic_00001_.png [output]") + "&subfolder=sub&type=input", http.StatusOK, "image/png"},
		{"filename=pic_00001_.png&subfolder=sub&channel=rgb", http.StatusOK, "image/png"},
		{"filename=pic_00001_.png&subfolder=sub&channel=a", http.StatusOK, "image/png"},
		{"filename=pic_00001_.png&subfolder=sub&preview=jpeg;80", http.StatusOK, "image/jpeg"},
		{"filename=pic_00001_.png&subfolder=sub&preview=webp", http.StatusOK, "image/webp"},
		{"filename=page.html", http.StatusOK, "application/octet-stream"},
		{"filename=data.bin", http.StatusOK, "application/octet-stream"},
		{"filename=blake3:abc", http.StatusNotFound, ""},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			st, _, hdr := h.do(http.MethodGet, "/view?"+tt.query, "", nil)
			require.Equal(t, tt.status, st)
			if tt.ctype != "" {
				require.Equal(t, tt.ctype, hdr.Get("Content-Type"))
			}
		})
	}
	_, _, hdr := h.do(http.MethodGet, "/view?filename=page.html", "", nil)
	require.Equal(t, `attachment; filename="page.html"`, hdr.Get("Content-Disposition"))
	require.Equal(t, "nosniff", hdr.Get("X-Content-Type-Options"))

	req, err := http.NewRequest(http.MethodGet, h.sim.URL+"/api/view?filename=data.bin", nil)
	require.NoError(t, err)
	req.Header.Set("Range", "bytes=2-4")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	require.Equal(t, "234", b.String())
}

func TestOtherOutputKinds(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	prompt := workflow{batch: 2, extraNodes: `
  "20": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["8", 0], "filename_prefix": "ComfyUI", "fps": 6.0, "lossless": true, "quality": 80, "method": "default"}},
  "21": {"class_type": "CreateVideo", "inputs": {"images": ["8", 0], "fps": 24}},
  "22": {"class_type": "SaveVideo", "inputs": {"video": ["21", 0], "filename_prefix": "video/ComfyUI", "format": "auto", "codec": "auto"}},
  "30": {"class_type": "EmptyLatentAudio", "inputs": {"seconds": 1.0, "batch_size": 1}},
  "31": {"class_type": "VAEDecodeAudio", "inputs": {"samples": ["30", 0], "vae": ["4", 2]}},
  "32": {"class_type": "SaveAudio", "inputs": {"audio": ["31", 0], "filename_prefix": "audio/ComfyUI"}},
  "40": {"class_type": "PreviewAny", "inputs": {"source": ["6", 0]}},
  "41": {"class_type": "PreviewAny", "inputs": {"source": "plain text"}}`}.json()
	pid := newID()
	h.submit(body(prompt, "c", pid))
	e := h.history(pid)
	require.Equal(t, "success", obj(t, e, "status")["status_str"], "%v", e["status"])
	outs := obj(t, e, "outputs")

	webp := obj(t, outs, "20")
	require.Equal(t, []any{true}, webp["animated"])
	ref := webp["images"].([]any)[0].(map[string]any)
	require.Equal(t, "ComfyUI_00003_.webp", ref["filename"], "SaveImage wrote 00001 and 00002 of the batch first")
	st, b, hdr := h.do(http.MethodGet, viewPath(ref), "", nil)
	require.Equal(t, http.StatusOK, st)
	require.Equal(t, "image/webp", hdr.Get("Content-Type"))
	require.Equal(t, "RIFF", string(b[:4]))
	require.Equal(t, "WEBP", string(b[8:12]))
	require.Equal(t, "VP8X", string(b[12:16]), "animated WebP")

	video := obj(t, outs, "22")
	require.Equal(t, []any{true}, video["animated"])
	ref = video["images"].([]any)[0].(map[string]any)
	require.Equal(t, map[string]any{"filename": "ComfyUI_00001_.mp4", "subfolder": "video", "type": "output"}, ref)
	st, b, hdr = h.do(http.MethodGet, viewPath(ref), "", nil)
	require.Equal(t, http.StatusOK, st)
	require.Equal(t, "video/mp4", hdr.Get("Content-Type"))
	require.Equal(t, "ftyp", string(b[4:8]))

	audio := obj(t, outs, "32")["audio"].([]any)
	ref = audio[0].(map[string]any)
	require.Equal(t, map[string]any{"filename": "ComfyUI_00001.flac", "subfolder": "audio", "type": "output"}, ref)
	st, b, hdr = h.do(http.MethodGet, viewPath(ref), "", nil)
	require.Equal(t, http.StatusOK, st)
	require.Equal(t, "audio/flac", hdr.Get("Content-Type"))
	require.Equal(t, "fLaC", string(b[:4]))

	require.Equal(t, map[string]any{"text": []any{"plain text"}}, obj(t, outs, "41"))
	text := obj(t, outs, "40")["text"].([]any)
	require.Len(t, text, 1)
	require.Contains(t, text[0], "tensor", "str() of a non-JSON value")
	require.Equal(t, json.Number("2"), json.Number(fmt.Sprint(len(obj(t, outs, "9")["images"].([]any)))))
}
