package node

import (
	"crypto/sha256"
	"fmt"
	"image"
	"math"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	// Decoders LoadImage needs for uploaded files.
	_ "image/gif"
	_ "image/jpeg"
	_ "image/png"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/media"
	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
)

// The core nodes: CheckpointLoaderSimple, CLIPTextEncode, the latents,
// KSampler, the VAE decoders, SaveImage, PreviewImage, LoadImage,
// PreviewAny and the v3 savers of animated WebP, audio and video.

func runCheckpointLoader(x *Run) ([]any, *pyvalue.Dict, error) {
	ck := x.str("ckpt_name")
	found := false
	for _, c := range x.Host.ModelFiles("checkpoints") {
		if c == ck {
			found = true
		}
	}
	if !found {
		return nil, nil, Raise("FileNotFoundError",
			fmt.Sprintf("Model in folder 'checkpoints' with filename '%s' not found.", ck), x.Class.FuncName())
	}
	return []any{
		modelVal{ck, pyObjectRepr("comfy.model_patcher.ModelPatcher")},
		clipVal{ck, pyObjectRepr("comfy.sd.CLIP")},
		vaeVal{ck, pyObjectRepr("comfy.sd.VAE")},
	}, nil, nil
}

func runCLIPTextEncode(x *Run) ([]any, *pyvalue.Dict, error) {
	clip, ok := x.Inputs["clip"].(clipVal)
	if !ok {
		return nil, nil, Raise("RuntimeError", "ERROR: clip input is invalid: None\n\nIf the clip is from a checkpoint loader node your checkpoint does not contain a valid clip or text encoder model.", x.Class.FuncName())
	}
	return []any{condVal{text: x.str("text"), ckpt: clip.ckpt}}, nil, nil
}

func runEmptyLatentImage(x *Run) ([]any, *pyvalue.Dict, error) {
	return []any{latentVal{w: x.intSmall("width"), h: x.intSmall("height"), batch: x.intSmall("batch_size")}}, nil, nil
}

// runEmptySD3LatentImage is EmptyLatentImage with SD3's and Flux's 16
// latent channels.
func runEmptySD3LatentImage(x *Run) ([]any, *pyvalue.Dict, error) {
	return []any{latentVal{w: x.intSmall("width"), h: x.intSmall("height"), batch: x.intSmall("batch_size"), channels: 16}}, nil, nil
}

func runFluxGuidance(x *Run) ([]any, *pyvalue.Dict, error) {
	c, ok := x.Inputs["conditioning"].(condVal)
	if !ok {
		return nil, nil, Raise("TypeError", "'NoneType' object is not iterable", x.Class.FuncName())
	}
	c.mods += fmt.Sprintf("+guidance:%g", x.float("guidance"))
	return []any{c}, nil, nil
}

func runConditioningZeroOut(x *Run) ([]any, *pyvalue.Dict, error) {
	c, ok := x.Inputs["conditioning"].(condVal)
	if !ok {
		return nil, nil, Raise("TypeError", "'NoneType' object is not iterable", x.Class.FuncName())
	}
	c.mods += "+zero"
	return []any{c}, nil, nil
}

func runEmptyLatentAudio(x *Run) ([]any, *pyvalue.Dict, error) {
	return []any{latentVal{audio: true, seconds: x.float("seconds"), batch: x.intSmall("batch_size")}}, nil, nil
}

func latentAudioLength(seconds float64) int {
	return int(math.RoundToEven(seconds*44100/2048/2)) * 2
}

// maxPixels bounds what the emulator renders: a batch larger than this many
// pixels raises the CUDA OOM a real GPU would, instead of exhausting the
// emulator's memory.
const maxPixels = 8192 * 8192

func (x *Run) oomIfHuge(lat latentVal) error {
	if lat.audio || int64(lat.w)*int64(lat.h)*int64(lat.batch) <= maxPixels {
		return nil
	}
	return OutOfMemory(DefaultOOMMessage, x.Class.FuncName())
}

func runKSampler(x *Run) ([]any, *pyvalue.Dict, error) {
	model, ok := x.Inputs["model"].(modelVal)
	if !ok {
		return nil, nil, x.noneInput("model", "load_device")
	}
	lat, ok := x.Inputs["latent_image"].(latentVal)
	if !ok {
		return nil, nil, Raise("TypeError", "'NoneType' object is not subscriptable", x.Class.FuncName())
	}
	if err := x.oomIfHuge(lat); err != nil {
		return nil, nil, err
	}
	pos, _ := x.Inputs["positive"].(condVal)
	neg, _ := x.Inputs["negative"].(condVal)
	seed := x.int("seed")
	steps := x.intSmall("steps")
	key := mix("ksampler", lat.key, lat.w, lat.h, lat.batch, model.ckpt, pos.content(), neg.content(), seed,
		steps, x.float("cfg"), x.str("sampler_name"), x.str("scheduler"), x.float("denoise"))
	out := lat
	out.key = key

	hook := x.Exec.ProgressBar(steps, false)
	for step := 1; step <= steps; step++ {
		if err := x.Exec.Sleep(x.Exec.StepDelay()); err != nil {
			return nil, nil, err
		}
		if err := x.Exec.AtStep(step); err != nil {
			return nil, nil, err
		}
		var preview func() []byte
		if x.Exec.Previews() && !lat.audio {
			st := step
			preview = func() []byte { return previewJPEG(lat.w, lat.h, key, st, steps) }
		}
		if err := hook.Update(step, preview); err != nil {
			return nil, nil, err
		}
	}
	return []any{out}, nil, nil
}

func runVAEDecode(x *Run) ([]any, *pyvalue.Dict, error) {
	lat, ok := x.Inputs["samples"].(latentVal)
	if !ok {
		return nil, nil, Raise("TypeError", "'NoneType' object is not subscriptable", x.Class.FuncName())
	}
	vae, ok := x.Inputs["vae"].(vaeVal)
	if !ok {
		return nil, nil, x.noneInput("vae", "decode")
	}
	if lat.audio {
		return nil, nil, Raise("RuntimeError", "Given groups=1, weight of size [512, 4, 3, 3], expected input[1, 64, 3, 1] to have 4 channels, but got 64 channels instead", x.Class.FuncName())
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

func runVAEDecodeAudio(x *Run) ([]any, *pyvalue.Dict, error) {
	lat, ok := x.Inputs["samples"].(latentVal)
	if !ok {
		return nil, nil, Raise("TypeError", "'NoneType' object is not subscriptable", x.Class.FuncName())
	}
	vae, ok := x.Inputs["vae"].(vaeVal)
	if !ok {
		return nil, nil, x.noneInput("vae", "decode")
	}
	if !lat.audio {
		return nil, nil, Raise("RuntimeError", "Given groups=1, weight of size [128, 64, 7], expected input to have 64 channels, but got 4 channels instead", x.Class.FuncName())
	}
	return []any{audioVal{rate: 44100, channels: 2, samples: latentAudioLength(lat.seconds) * 2048, batch: lat.batch,
		key: mix("vae-audio", lat.key, vae.ckpt)}}, nil, nil
}

func runSaveImage(x *Run) ([]any, *pyvalue.Dict, error) {
	return saveImages(x, "output", x.str("filename_prefix"), 4)
}

func runPreviewImage(x *Run) ([]any, *pyvalue.Dict, error) {
	return saveImages(x, "temp", "ComfyUI"+x.Object.previewSuffix, 1)
}

// saveImages is SaveImage.save_images.
func saveImages(x *Run, typ, prefix string, level int) ([]any, *pyvalue.Dict, error) {
	img, err := x.images("images")
	if err != nil {
		return nil, nil, err
	}
	sp, err := x.Exec.SaveImagePath(typ, prefix, img.w, img.h, x.Class.FuncName())
	if err != nil {
		return nil, nil, err
	}
	texts, err := x.pngTexts()
	if err != nil {
		return nil, nil, err
	}
	var results []any
	counter := sp.Counter
	for b, f := range img.frames {
		name := strings.ReplaceAll(sp.Filename, "%batch_num%", strconv.Itoa(b))
		file := fmt.Sprintf("%s_%05d_.png", name, counter)
		data, err := media.EncodePNG(f.render(img.w, img.h), texts, level)
		if err != nil {
			return nil, nil, Raise("OSError", err.Error(), x.Class.FuncName())
		}
		if err := x.Exec.WriteFile(filepath.Join(sp.Folder, file), data); err != nil {
			return nil, nil, Raise("OSError", err.Error(), x.Class.FuncName())
		}
		results = append(results, pyvalue.NewDict("filename", file, "subfolder", sp.Subfolder, "type", typ))
		counter++
	}
	x.Exec.Saved(sp, counter)
	return []any{img}, pyvalue.NewDict("images", results), nil
}

// pngTexts are the tEXt chunks SaveImage writes: "prompt" and each
// extra_pnginfo key, as json.dumps of the value.
func (x *Run) pngTexts() ([][2]string, error) {
	texts := [][2]string{{"prompt", string(pyvalue.Encode(x.Prompt))}}
	if pi, ok := x.ExtraPNGInfo.(*pyvalue.Dict); ok {
		for _, k := range pi.Keys() {
			if !isLatin1(k) {
				return nil, Raise("UnicodeEncodeError", fmt.Sprintf("'latin-1' codec can't encode characters in position 0-%d: ordinal not in range(256)", len([]rune(k))-1), x.Class.FuncName())
			}
			v, _ := pi.Get(k)
			texts = append(texts, [2]string{k, string(pyvalue.Encode(v))})
		}
	} else if x.ExtraPNGInfo != nil {
		return nil, Raise("TypeError", fmt.Sprintf("'%s' object is not iterable", pyvalue.TypeName(x.ExtraPNGInfo)), x.Class.FuncName())
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

func runLoadImage(x *Run) ([]any, *pyvalue.Dict, error) {
	name := x.str("image")
	path, err := x.Host.AnnotatedPath(name)
	if err != nil {
		return nil, nil, Raise("ValueError", fmt.Sprintf("Invalid file path: %s", pyvalue.StrRepr(name)), x.Class.FuncName())
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, Raise("FileNotFoundError", fmt.Sprintf("[Errno 2] No such file or directory: %s", pyvalue.StrRepr(path)), x.Class.FuncName())
	}
	defer f.Close()
	src, _, err := image.Decode(f)
	if err != nil {
		return nil, nil, Raise("PIL.UnidentifiedImageError", fmt.Sprintf("cannot identify image file %s", pyvalue.StrRepr(path)), x.Class.FuncName())
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
func loadImageIsChanged(h Host, inputs *pyvalue.Dict) any {
	v, _ := inputs.Get("image")
	name, ok := v.(string)
	if !ok {
		return nil
	}
	path, err := h.AnnotatedPath(name)
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
func validateLoadImage(h Host, args map[string]any) (any, *Error) {
	v, ok := args["image"]
	if !ok {
		return nil, Raise("TypeError", "LoadImage.VALIDATE_INPUTS() missing 1 required positional argument: 'image'", "VALIDATE_INPUTS")
	}
	name, isStr := v.(string)
	if !isStr {
		return nil, Raise("AttributeError", fmt.Sprintf("'%s' object has no attribute 'endswith'", pyvalue.TypeName(v)), "VALIDATE_INPUTS")
	}
	if !h.AnnotatedExists(name) {
		return "Invalid image file: " + name, nil
	}
	return true, nil
}

func runPreviewAny(x *Run) ([]any, *pyvalue.Dict, error) {
	source := x.Inputs["source"]
	value := "None"
	switch t := source.(type) {
	case nil:
	case string:
		value = t
	case *big.Int, float64, bool:
		value = pyvalue.Str(t)
	case *pyvalue.Dict, []any:
		value = string(pyvalue.EncodeIndent(t, 4))
	default:
		value = pyvalue.Str(t)
	}
	return []any{value}, pyvalue.NewDict("text", []any{value}), nil
}

func runSaveAnimatedWEBP(x *Run) ([]any, *pyvalue.Dict, error) {
	img, err := x.images("images")
	if err != nil {
		return nil, nil, err
	}
	sp, err := x.Exec.SaveImagePath("output", x.str("filename_prefix"), img.w, img.h, "SaveAnimatedWEBP.execute")
	if err != nil {
		return nil, nil, err
	}
	fps := x.float("fps")
	frames := make([]*image.NRGBA, len(img.frames))
	for k, f := range img.frames {
		frames[k] = f.render(img.w, img.h)
	}
	file := fmt.Sprintf("%s_%05d_.webp", sp.Filename, sp.Counter)
	data := media.EncodeAnimatedWebP(frames, int(1000.0/fps))
	if err := x.Exec.WriteFile(filepath.Join(sp.Folder, file), data); err != nil {
		return nil, nil, Raise("OSError", err.Error(), "SaveAnimatedWEBP.execute")
	}
	x.Exec.Saved(sp, sp.Counter+1)
	ui := pyvalue.NewDict("images", []any{pyvalue.NewDict("filename", file, "subfolder", sp.Subfolder, "type", "output")})
	if len(frames) > 1 {
		ui.Set("animated", []any{true})
	}
	return []any{img}, ui, nil
}

func runSaveAudio(x *Run) ([]any, *pyvalue.Dict, error) {
	a, ok := x.Inputs["audio"].(audioVal)
	if !ok {
		return nil, nil, Raise("ValueError", "SaveAudio: input audio is None (source video may have no audio track).", "SaveAudio.execute")
	}
	sp, err := x.Exec.SaveImagePath("output", x.str("filename_prefix"), 0, 0, "SaveAudio.execute")
	if err != nil {
		return nil, nil, err
	}
	comments := [][2]string{{"prompt", string(pyvalue.Encode(x.Prompt))}}
	if pi, ok := x.ExtraPNGInfo.(*pyvalue.Dict); ok {
		for _, k := range pi.Keys() {
			v, _ := pi.Get(k)
			comments = append(comments, [2]string{k, string(pyvalue.Encode(v))})
		}
	}
	var results []any
	counter := sp.Counter
	for b := 0; b < a.batch; b++ {
		name := strings.ReplaceAll(sp.Filename, "%batch_num%", strconv.Itoa(b))
		file := fmt.Sprintf("%s_%05d.flac", name, counter)
		data := media.EncodeFLAC(a.rate, tone(a.rate, a.channels, a.samples, mix(a.key, b)), comments)
		if err := x.Exec.WriteFile(filepath.Join(sp.Folder, file), data); err != nil {
			return nil, nil, Raise("OSError", err.Error(), "SaveAudio.execute")
		}
		results = append(results, pyvalue.NewDict("filename", file, "subfolder", sp.Subfolder, "type", "output"))
		counter++
	}
	x.Exec.Saved(sp, counter)
	return []any{a}, pyvalue.NewDict("audio", results), nil
}

func runCreateVideo(x *Run) ([]any, *pyvalue.Dict, error) {
	img, err := x.images("images")
	if err != nil {
		return nil, nil, err
	}
	v := videoVal{images: img, fps: x.float("fps"), repr: pyObjectRepr("comfy_api.latest._input_impl.video_types.VideoFromComponents")}
	if a, ok := x.Inputs["audio"].(audioVal); ok {
		v.audio = &a
	}
	return []any{v}, nil, nil
}

func runSaveVideo(x *Run) ([]any, *pyvalue.Dict, error) {
	v, ok := x.Inputs["video"].(videoVal)
	if !ok {
		return nil, nil, x.noneInput("video", "get_dimensions")
	}
	sp, err := x.Exec.SaveImagePath("output", x.str("filename_prefix"), v.images.w, v.images.h, "SaveVideo.execute")
	if err != nil {
		return nil, nil, err
	}
	file := fmt.Sprintf("%s_%05d_.mp4", sp.Filename, sp.Counter)
	frames := make([]*image.NRGBA, len(v.images.frames))
	for k, f := range v.images.frames {
		frames[k] = f.render(v.images.w, v.images.h)
	}
	data, err := media.EncodeMJPEGMP4(frames, v.fps)
	if err != nil {
		return nil, nil, Raise("OSError", err.Error(), "SaveVideo.execute")
	}
	if err := x.Exec.WriteFile(filepath.Join(sp.Folder, file), data); err != nil {
		return nil, nil, Raise("OSError", err.Error(), "SaveVideo.execute")
	}
	x.Exec.Saved(sp, sp.Counter+1)
	ui := pyvalue.NewDict("images", []any{pyvalue.NewDict("filename", file, "subfolder", sp.Subfolder, "type", "output")}, "animated", []any{true})
	return []any{v}, ui, nil
}
