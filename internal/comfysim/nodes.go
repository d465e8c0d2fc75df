package comfysim

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"image"
	"math"
	"math/big"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	// Decoders LoadImage needs for uploaded files.
	_ "image/gif"
	_ "image/jpeg"
	_ "image/png"
)

// The values flowing between emulated nodes. None of them holds pixels except
// images loaded from files: generated images are described by a key and drawn
// when a node writes a file, so cached outputs stay small.

var fakeAddr atomic.Uint64

func pyObjectRepr(class string) string {
	return fmt.Sprintf("<%s object at 0x7f%010x>", class, 0x3a00000000+fakeAddr.Add(0x40))
}

type modelVal struct{ ckpt, repr string }

func (m modelVal) String() string { return m.repr }

type clipVal struct{ ckpt, repr string }

func (c clipVal) String() string { return c.repr }

type vaeVal struct{ ckpt, repr string }

func (v vaeVal) String() string { return v.repr }

type condVal struct{ text, ckpt string }

func (c condVal) String() string {
	return "[[tensor([[[-0.3885,  0.0230, -0.0521,  ..., -0.4901, -0.3066,  0.0674]]]), {'pooled_output': tensor([[-0.0312,  0.4125,  0.1190,  ...,  0.0912, -0.2263,  0.2051]])}]]"
}

// latentVal is a LATENT dict; key identifies its content (0 = empty latent).
type latentVal struct {
	w, h, batch int
	key         uint64
	audio       bool
	seconds     float64
}

func (l latentVal) String() string {
	if l.audio {
		return fmt.Sprintf("{'samples': tensor([[[0., 0., 0.,  ..., 0., 0., 0.]]]), 'type': 'audio', 'downscale_ratio_temporal': 2048}  # shape [%d, 64, %d]", l.batch, latentAudioLength(l.seconds))
	}
	return fmt.Sprintf("{'samples': tensor([[[[0., 0., 0.,  ..., 0., 0., 0.]]]])}  # shape [%d, 4, %d, %d]", l.batch, l.h/8, l.w/8)
}

// frame is one image of a batch: generated from a key, or decoded from a file.
type frame struct {
	key uint64
	img *image.NRGBA
}

// imageVal is an IMAGE tensor [batch, h, w, 3].
type imageVal struct {
	w, h   int
	frames []frame
}

func (v *imageVal) String() string {
	return fmt.Sprintf("tensor([[[[0.5020, 0.4980, 0.5059],\n          ...,\n          [0.4941, 0.5098, 0.5020]]]])  # shape [%d, %d, %d, 3]", len(v.frames), v.h, v.w)
}

func (f frame) render(w, h int) *image.NRGBA {
	if f.img != nil {
		return f.img
	}
	return renderImage(w, h, f.key)
}

type maskVal struct{ w, h, n int }

func (m maskVal) String() string {
	return fmt.Sprintf("tensor([[[0., 0., 0.,  ..., 0., 0., 0.]]])  # shape [%d, %d, %d]", m.n, m.h, m.w)
}

// audioVal is an AUDIO dict: batch of waveforms described by a key.
type audioVal struct {
	rate, channels, samples, batch int
	key                            uint64
}

func (a audioVal) String() string {
	return fmt.Sprintf("{'waveform': tensor([[[ 0.0000,  0.0012, ..., -0.0008]]]), 'sample_rate': %d}  # shape [%d, %d, %d]", a.rate, a.batch, a.channels, a.samples)
}

// videoVal is a VIDEO (VideoFromComponents).
type videoVal struct {
	images *imageVal
	fps    float64
	audio  *audioVal
	repr   string
}

func (v videoVal) String() string { return v.repr }

// mix hashes its parts into a 64-bit key, stably across processes.
func mix(parts ...any) uint64 {
	h := sha256.New()
	for _, p := range parts {
		s := ""
		switch t := p.(type) {
		case string:
			s = t
		case uint64:
			s = strconv.FormatUint(t, 16)
		case int:
			s = strconv.Itoa(t)
		case *big.Int:
			s = t.String()
		case float64:
			s = strconv.FormatFloat(t, 'g', -1, 64)
		default:
			s = fmt.Sprint(t)
		}
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	sum := h.Sum(nil)
	return binary.LittleEndian.Uint64(sum[:8])
}

func randIntn(n int) int { return rand.IntN(n) }

// --- input accessors (validation guarantees the types of declared inputs) ---

func (x *nodeRun) str(name string) string {
	s, _ := x.in[name].(string)
	return s
}

func (x *nodeRun) int(name string) *big.Int {
	switch t := x.in[name].(type) {
	case *big.Int:
		return t
	case bool:
		if t {
			return big.NewInt(1)
		}
	}
	return big.NewInt(0)
}

func (x *nodeRun) intSmall(name string) int {
	n := x.int(name)
	if !n.IsInt64() {
		return math.MaxInt32
	}
	return int(n.Int64())
}

func (x *nodeRun) float(name string) float64 {
	f, _ := pyFloatConv(x.in[name])
	return f
}

// noneInput raises the error a Python node raises when a linked input
// arrived as None (its source produced nothing for that slot).
func (x *nodeRun) noneInput(name, attr string) error {
	return pyException("AttributeError", fmt.Sprintf("'NoneType' object has no attribute '%s'", attr), x.def.funcName())
}

// --- node implementations ---

func runCheckpointLoader(x *nodeRun) ([]any, *pyDict, error) {
	ck := x.str("ckpt_name")
	found := false
	for _, c := range x.s.checkpoints {
		if c == ck {
			found = true
		}
	}
	if !found {
		return nil, nil, pyException("FileNotFoundError",
			fmt.Sprintf("Model in folder 'checkpoints' with filename '%s' not found.", ck), x.def.funcName())
	}
	return []any{
		modelVal{ck, pyObjectRepr("comfy.model_patcher.ModelPatcher")},
		clipVal{ck, pyObjectRepr("comfy.sd.CLIP")},
		vaeVal{ck, pyObjectRepr("comfy.sd.VAE")},
	}, nil, nil
}

func runCLIPTextEncode(x *nodeRun) ([]any, *pyDict, error) {
	clip, ok := x.in["clip"].(clipVal)
	if !ok {
		return nil, nil, pyException("RuntimeError", "ERROR: clip input is invalid: None\n\nIf the clip is from a checkpoint loader node your checkpoint does not contain a valid clip or text encoder model.", x.def.funcName())
	}
	return []any{condVal{text: x.str("text"), ckpt: clip.ckpt}}, nil, nil
}

func runEmptyLatentImage(x *nodeRun) ([]any, *pyDict, error) {
	return []any{latentVal{w: x.intSmall("width"), h: x.intSmall("height"), batch: x.intSmall("batch_size")}}, nil, nil
}

func runEmptyLatentAudio(x *nodeRun) ([]any, *pyDict, error) {
	return []any{latentVal{audio: true, seconds: x.float("seconds"), batch: x.intSmall("batch_size")}}, nil, nil
}

func latentAudioLength(seconds float64) int {
	return int(math.RoundToEven(seconds*44100/2048/2)) * 2
}

// progressHook is ProgressBar.update_absolute plus the server hook: throttled
// like v0.9.2 (first, final and preview ticks always; otherwise at least 100 ms
// and 0.5 % apart), each sent tick being progress_state, [type 4 preview],
// progress, [type 1 preview].
type progressHook struct {
	x        *nodeRun
	total    int
	lastSent int
	lastTime time.Time
	// png marks previews as PNG (SaveImageWebsocket's full-size images)
	// instead of sampler JPEGs.
	png bool
}

func (p *progressHook) update(value int, preview func() []byte) error {
	ex := p.x.ex
	if err := ex.checkInterrupt(); err != nil {
		return err
	}
	if value > p.total {
		value = p.total
	}
	var img []byte
	if preview != nil {
		img = preview()
	}
	now := time.Now()
	first := p.lastSent < 0
	final := value >= p.total
	if img == nil && !first && !final {
		pct := 100.0
		if p.total > 0 {
			pct = float64(value-max(0, p.lastSent)) / float64(p.total) * 100
		}
		if now.Sub(p.lastTime) < 100*time.Millisecond || pct < 0.5 {
			return nil
		}
	}
	p.lastSent, p.lastTime = value, now

	id := p.x.nodeID
	st := ex.ensureProgress(id)
	st.state, st.value, st.max = "running", value, p.total
	if err := ex.sendProgressState(); err != nil {
		return err
	}
	meta := ex.s.hub.supportsFeature(ex.clientID, "supports_preview_metadata")
	if img != nil && meta {
		imageType := "image/jpeg"
		if p.png {
			imageType = "image/png"
		}
		md := encodePy(newDict("node_id", id, "prompt_id", ex.item.id, "display_node_id", id,
			"parent_node_id", nil, "real_node_id", id, "image_type", imageType))
		frameBytes := binary.BigEndian.AppendUint32(nil, 4)
		frameBytes = binary.BigEndian.AppendUint32(frameBytes, uint32(len(md)))
		frameBytes = append(frameBytes, md...)
		frameBytes = append(frameBytes, img...)
		if err := ex.sendBinary(ex.target(), frameBytes); err != nil {
			return err
		}
	}
	if err := ex.send(ex.target(), "progress", newDict("value", value, "max", p.total, "prompt_id", ex.item.id, "node", id)); err != nil {
		return err
	}
	if img != nil && !meta {
		format := uint32(1) // JPEG
		if p.png {
			format = 2
		}
		frameBytes := binary.BigEndian.AppendUint32(nil, 1)
		frameBytes = binary.BigEndian.AppendUint32(frameBytes, format)
		frameBytes = append(frameBytes, img...)
		return ex.sendBinary(ex.target(), frameBytes)
	}
	return nil
}

// maxPixels bounds what the emulator renders: a batch larger than this many
// pixels raises the CUDA OOM a real GPU would, instead of exhausting the
// emulator's memory.
const maxPixels = 8192 * 8192

func (x *nodeRun) oomIfHuge(lat latentVal) error {
	if lat.audio || int64(lat.w)*int64(lat.h)*int64(lat.batch) <= maxPixels {
		return nil
	}
	e := pyException("torch.OutOfMemoryError", defaultOOMMessage, x.def.funcName())
	e.tips = oomTips
	return e
}

func runKSampler(x *nodeRun) ([]any, *pyDict, error) {
	model, ok := x.in["model"].(modelVal)
	if !ok {
		return nil, nil, x.noneInput("model", "load_device")
	}
	lat, ok := x.in["latent_image"].(latentVal)
	if !ok {
		return nil, nil, pyException("TypeError", "'NoneType' object is not subscriptable", x.def.funcName())
	}
	if err := x.oomIfHuge(lat); err != nil {
		return nil, nil, err
	}
	pos, _ := x.in["positive"].(condVal)
	neg, _ := x.in["negative"].(condVal)
	seed := x.int("seed")
	steps := x.intSmall("steps")
	key := mix("ksampler", lat.key, lat.w, lat.h, lat.batch, model.ckpt, pos.text, neg.text, seed,
		steps, x.float("cfg"), x.str("sampler_name"), x.str("scheduler"), x.float("denoise"))
	out := lat
	out.key = key

	hook := &progressHook{x: x, total: steps, lastSent: -1}
	delay := x.s.currentStepDelay
	for step := 1; step <= steps; step++ {
		if err := x.ex.sleep(delay()); err != nil {
			return nil, nil, err
		}
		if err := x.ex.stepFaults(x, step); err != nil {
			return nil, nil, err
		}
		var preview func() []byte
		if x.ex.previews && !lat.audio {
			st := step
			preview = func() []byte { return previewJPEG(lat.w, lat.h, key, st, steps) }
		}
		if err := hook.update(step, preview); err != nil {
			return nil, nil, err
		}
	}
	return []any{out}, nil, nil
}

// stepFaults applies the fault-injection hooks that act at a sampler step.
func (ex *execution) stepFaults(x *nodeRun, step int) error {
	s := ex.s
	s.mu.Lock()
	f := s.fault
	s.mu.Unlock()
	if f.FailAtStep > 0 && f.FailAtStep == step {
		if err := ex.injectedFault(x.def, step); err != nil {
			return err
		}
	}
	if f.DropWebSocketsAtStep > 0 && step == f.DropWebSocketsAtStep && !ex.faultStepDone["drop"] {
		ex.faultStepDone["drop"] = true
		s.DropWebSockets()
	}
	if f.RestartAtStep > 0 && step == f.RestartAtStep {
		s.Restart()
		return errAborted
	}
	if f.HangAtStep > 0 && step == f.HangAtStep {
		// Hang until interrupted, abandoned, or the fault is cleared.
		for {
			s.mu.Lock()
			still := s.fault.HangAtStep == step
			s.mu.Unlock()
			if !still {
				return nil
			}
			if err := ex.sleep(10 * time.Millisecond); err != nil {
				return err
			}
		}
	}
	return nil
}

func runVAEDecode(x *nodeRun) ([]any, *pyDict, error) {
	lat, ok := x.in["samples"].(latentVal)
	if !ok {
		return nil, nil, pyException("TypeError", "'NoneType' object is not subscriptable", x.def.funcName())
	}
	vae, ok := x.in["vae"].(vaeVal)
	if !ok {
		return nil, nil, x.noneInput("vae", "decode")
	}
	if lat.audio {
		return nil, nil, pyException("RuntimeError", "Given groups=1, weight of size [512, 4, 3, 3], expected input[1, 64, 3, 1] to have 4 channels, but got 64 channels instead", x.def.funcName())
	}
	if err := x.oomIfHuge(lat); err != nil {
		return nil, nil, err
	}
	img := &imageVal{w: lat.w / 8 * 8, h: lat.h / 8 * 8}
	for b := 0; b < lat.batch; b++ {
		img.frames = append(img.frames, frame{key: mix("vae", lat.key, vae.ckpt, b)})
	}
	return []any{img}, nil, nil
}

func runVAEDecodeAudio(x *nodeRun) ([]any, *pyDict, error) {
	lat, ok := x.in["samples"].(latentVal)
	if !ok {
		return nil, nil, pyException("TypeError", "'NoneType' object is not subscriptable", x.def.funcName())
	}
	vae, ok := x.in["vae"].(vaeVal)
	if !ok {
		return nil, nil, x.noneInput("vae", "decode")
	}
	if !lat.audio {
		return nil, nil, pyException("RuntimeError", "Given groups=1, weight of size [128, 64, 7], expected input to have 64 channels, but got 4 channels instead", x.def.funcName())
	}
	return []any{audioVal{rate: 44100, channels: 2, samples: latentAudioLength(lat.seconds) * 2048, batch: lat.batch,
		key: mix("vae-audio", lat.key, vae.ckpt)}}, nil, nil
}

// images returns the IMAGE input or the error ComfyUI would raise for None.
func (x *nodeRun) images(name string) (*imageVal, error) {
	img, ok := x.in[name].(*imageVal)
	if !ok || len(img.frames) == 0 {
		return nil, pyException("TypeError", "'NoneType' object is not subscriptable", x.def.funcName())
	}
	return img, nil
}

func runSaveImage(x *nodeRun) ([]any, *pyDict, error) {
	return saveImages(x, x.s.outputDir, "output", x.str("filename_prefix"), 4)
}

func runPreviewImage(x *nodeRun) ([]any, *pyDict, error) {
	return saveImages(x, x.s.tempDir, "temp", "ComfyUI"+x.object.previewSuffix, 1)
}

// saveImages is SaveImage.save_images.
func saveImages(x *nodeRun, dir, typ, prefix string, level int) ([]any, *pyDict, error) {
	img, err := x.images("images")
	if err != nil {
		return nil, nil, err
	}
	sp, err := saveImagePath(x.s.counters, prefix, dir, img.w, img.h, x.def.funcName())
	if err != nil {
		return nil, nil, err
	}
	texts, err := x.pngTexts()
	if err != nil {
		return nil, nil, err
	}
	var results []any
	counter := sp.counter
	for b, f := range img.frames {
		name := strings.ReplaceAll(sp.filename, "%batch_num%", strconv.Itoa(b))
		file := fmt.Sprintf("%s_%05d_.png", name, counter)
		data, err := encodePNG(f.render(img.w, img.h), texts, level)
		if err != nil {
			return nil, nil, pyException("OSError", err.Error(), x.def.funcName())
		}
		if err := x.s.writeOutput(filepath.Join(sp.folder, file), data); err != nil {
			return nil, nil, pyException("OSError", err.Error(), x.def.funcName())
		}
		results = append(results, newDict("filename", file, "subfolder", sp.subfolder, "type", typ))
		counter++
	}
	x.s.counters.wrote(sp, counter)
	return []any{img}, newDict("images", results), nil
}

// pngTexts are the tEXt chunks SaveImage writes: "prompt" and each
// extra_pnginfo key, as json.dumps of the value.
func (x *nodeRun) pngTexts() ([][2]string, error) {
	texts := [][2]string{{"prompt", string(encodePy(x.prompt))}}
	if pi, ok := x.extraPNG.(*pyDict); ok {
		for _, k := range pi.Keys() {
			if !isLatin1(k) {
				return nil, pyException("UnicodeEncodeError", fmt.Sprintf("'latin-1' codec can't encode characters in position 0-%d: ordinal not in range(256)", len([]rune(k))-1), x.def.funcName())
			}
			v, _ := pi.Get(k)
			texts = append(texts, [2]string{k, string(encodePy(v))})
		}
	} else if x.extraPNG != nil {
		return nil, pyException("TypeError", fmt.Sprintf("'%s' object is not iterable", pyTypeName(x.extraPNG)), x.def.funcName())
	}
	return texts, nil
}

func isLatin1(s string) bool {
	for _, r := range s {
		if r > 0xff {
			return false
		}
	}
	return true
}

func runLoadImage(x *nodeRun) ([]any, *pyDict, error) {
	name := x.str("image")
	path, err := x.s.annotatedPath(name, x.s.inputDir)
	if err != nil {
		return nil, nil, pyException("ValueError", fmt.Sprintf("Invalid file path: %s", pyStrRepr(name)), x.def.funcName())
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, pyException("FileNotFoundError", fmt.Sprintf("[Errno 2] No such file or directory: %s", pyStrRepr(path)), x.def.funcName())
	}
	defer f.Close()
	src, _, err := image.Decode(f)
	if err != nil {
		return nil, nil, pyException("PIL.UnidentifiedImageError", fmt.Sprintf("cannot identify image file %s", pyStrRepr(path)), x.def.funcName())
	}
	b := src.Bounds()
	nrgba := image.NewNRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	for y := 0; y < b.Dy(); y++ {
		for xx := 0; xx < b.Dx(); xx++ {
			nrgba.Set(xx, y, src.At(b.Min.X+xx, b.Min.Y+y))
		}
	}
	// The IMAGE tensor is RGB: drop alpha.
	for p := 3; p < len(nrgba.Pix); p += 4 {
		nrgba.Pix[p] = 0xff
	}
	img := &imageVal{w: b.Dx(), h: b.Dy(), frames: []frame{{img: nrgba}}}
	return []any{img, maskVal{w: b.Dx(), h: b.Dy(), n: 1}}, nil, nil
}

// loadImageIsChanged is LoadImage.IS_CHANGED: the sha256 of the file; an
// error yields NaN, which never equals itself, so the node always re-runs.
func loadImageIsChanged(s *Server, inputs *pyDict) any {
	v, _ := inputs.Get("image")
	name, ok := v.(string)
	if !ok {
		return nil
	}
	path, err := s.annotatedPath(name, s.inputDir)
	if err != nil {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	sum := sha256.Sum256(data)
	return fmt.Sprintf("%x", sum)
}

// validateLoadImage is LoadImage.VALIDATE_INPUTS.
func validateLoadImage(s *Server, args map[string]any) (any, *nodeError) {
	v, ok := args["image"]
	if !ok {
		return nil, pyException("TypeError", "LoadImage.VALIDATE_INPUTS() missing 1 required positional argument: 'image'", "VALIDATE_INPUTS")
	}
	name, isStr := v.(string)
	if !isStr {
		return nil, pyException("AttributeError", fmt.Sprintf("'%s' object has no attribute 'endswith'", pyTypeName(v)), "VALIDATE_INPUTS")
	}
	if !s.annotatedExists(name) {
		return "Invalid image file: " + name, nil
	}
	return true, nil
}

func runPreviewAny(x *nodeRun) ([]any, *pyDict, error) {
	source := x.in["source"]
	value := "None"
	switch t := source.(type) {
	case nil:
	case string:
		value = t
	case *big.Int, float64, bool:
		value = pyStr(t)
	case *pyDict, []any:
		value = string(encodePyIndent(t, 4))
	default:
		value = pyStr(t)
	}
	return []any{value}, newDict("text", []any{value}), nil
}

func runSaveAnimatedWEBP(x *nodeRun) ([]any, *pyDict, error) {
	img, err := x.images("images")
	if err != nil {
		return nil, nil, err
	}
	sp, err := saveImagePath(x.s.counters, x.str("filename_prefix"), x.s.outputDir, img.w, img.h, "SaveAnimatedWEBP.execute")
	if err != nil {
		return nil, nil, err
	}
	fps := x.float("fps")
	frames := make([]*image.NRGBA, len(img.frames))
	for k, f := range img.frames {
		frames[k] = f.render(img.w, img.h)
	}
	file := fmt.Sprintf("%s_%05d_.webp", sp.filename, sp.counter)
	data := encodeAnimatedWebP(frames, int(1000.0/fps))
	if err := x.s.writeOutput(filepath.Join(sp.folder, file), data); err != nil {
		return nil, nil, pyException("OSError", err.Error(), "SaveAnimatedWEBP.execute")
	}
	x.s.counters.wrote(sp, sp.counter+1)
	ui := newDict("images", []any{newDict("filename", file, "subfolder", sp.subfolder, "type", "output")})
	if len(frames) > 1 {
		ui.Set("animated", []any{true})
	}
	return []any{img}, ui, nil
}

func runSaveAudio(x *nodeRun) ([]any, *pyDict, error) {
	a, ok := x.in["audio"].(audioVal)
	if !ok {
		return nil, nil, pyException("ValueError", "SaveAudio: input audio is None (source video may have no audio track).", "SaveAudio.execute")
	}
	sp, err := saveImagePath(x.s.counters, x.str("filename_prefix"), x.s.outputDir, 0, 0, "SaveAudio.execute")
	if err != nil {
		return nil, nil, err
	}
	comments := [][2]string{{"prompt", string(encodePy(x.prompt))}}
	if pi, ok := x.extraPNG.(*pyDict); ok {
		for _, k := range pi.Keys() {
			v, _ := pi.Get(k)
			comments = append(comments, [2]string{k, string(encodePy(v))})
		}
	}
	var results []any
	counter := sp.counter
	for b := 0; b < a.batch; b++ {
		name := strings.ReplaceAll(sp.filename, "%batch_num%", strconv.Itoa(b))
		file := fmt.Sprintf("%s_%05d.flac", name, counter)
		data := encodeFLAC(a.rate, a.channels, a.samples, mix(a.key, b), comments)
		if err := x.s.writeOutput(filepath.Join(sp.folder, file), data); err != nil {
			return nil, nil, pyException("OSError", err.Error(), "SaveAudio.execute")
		}
		results = append(results, newDict("filename", file, "subfolder", sp.subfolder, "type", "output"))
		counter++
	}
	x.s.counters.wrote(sp, counter)
	return []any{a}, newDict("audio", results), nil
}

func runCreateVideo(x *nodeRun) ([]any, *pyDict, error) {
	img, err := x.images("images")
	if err != nil {
		return nil, nil, err
	}
	v := videoVal{images: img, fps: x.float("fps"), repr: pyObjectRepr("comfy_api.latest._input_impl.video_types.VideoFromComponents")}
	if a, ok := x.in["audio"].(audioVal); ok {
		v.audio = &a
	}
	return []any{v}, nil, nil
}

func runSaveVideo(x *nodeRun) ([]any, *pyDict, error) {
	v, ok := x.in["video"].(videoVal)
	if !ok {
		return nil, nil, x.noneInput("video", "get_dimensions")
	}
	sp, err := saveImagePath(x.s.counters, x.str("filename_prefix"), x.s.outputDir, v.images.w, v.images.h, "SaveVideo.execute")
	if err != nil {
		return nil, nil, err
	}
	file := fmt.Sprintf("%s_%05d_.mp4", sp.filename, sp.counter)
	frames := make([]*image.NRGBA, len(v.images.frames))
	for k, f := range v.images.frames {
		frames[k] = f.render(v.images.w, v.images.h)
	}
	data, err := encodeMJPEGMP4(frames, v.fps)
	if err != nil {
		return nil, nil, pyException("OSError", err.Error(), "SaveVideo.execute")
	}
	if err := x.s.writeOutput(filepath.Join(sp.folder, file), data); err != nil {
		return nil, nil, pyException("OSError", err.Error(), "SaveVideo.execute")
	}
	x.s.counters.wrote(sp, sp.counter+1)
	ui := newDict("images", []any{newDict("filename", file, "subfolder", sp.subfolder, "type", "output")}, "animated", []any{true})
	return []any{v}, ui, nil
}
