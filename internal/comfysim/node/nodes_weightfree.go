package node

import (
	"bytes"
	"fmt"
	"image"
	"image/jpeg"
	"math"
	"math/big"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/media"
	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
)

// The weight-free core nodes, which compute on pixels as ComfyUI does
// (float32 RGB in [0, 1], SaveImage truncating 255*v to a byte), so that a
// workflow of them gives the same file names, shapes and pixels (within
// rounding) as the real server: EmptyImage, ImageInvert, ImageScale,
// ImageScaleBy, ImageBlur, SaveAnimatedPNG, PrimitiveString, PrimitiveInt,
// StringConcatenate, RandomNoise, GetImageSize; and FidelityLongNode, the
// custom node of testdata/realcomfy/fidelity_nodes the recorded traces use.

// pixels returns a frame's RGB floats.
func (f frame) pixels(w, h int) []float32 {
	if f.px != nil {
		return f.px
	}
	img := f.render(w, h)
	px := make([]float32, 0, w*h*3)
	for p := 0; p < len(img.Pix); p += 4 {
		px = append(px, float32(img.Pix[p])/255, float32(img.Pix[p+1])/255, float32(img.Pix[p+2])/255)
	}
	return px
}

// quantize is SaveImage's np.clip(255. * i, 0, 255).astype(np.uint8).
func quantize(px []float32, w, h int) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for k := 0; k < w*h; k++ {
		for c := range 3 {
			v := 255 * px[3*k+c]
			switch {
			case v != v || v < 0:
				v = 0
			case v > 255:
				v = 255
			}
			img.Pix[4*k+c] = byte(v)
		}
		img.Pix[4*k+3] = 0xff
	}
	return img
}

// mapFrames applies op to every frame of an image batch.
func mapFrames(img *imageVal, w, h int, op func(px []float32) []float32) *imageVal {
	out := &imageVal{w: w, h: h}
	for _, f := range img.frames {
		out.frames = append(out.frames, frame{px: op(f.pixels(img.w, img.h))})
	}
	return out
}

func runEmptyImage(x *Run) ([]any, *pyvalue.Dict, error) {
	w, h, n := x.intSmall("width"), x.intSmall("height"), x.intSmall("batch_size")
	if int64(w)*int64(h)*int64(n) > maxPixels {
		return nil, nil, OutOfMemory(DefaultOOMMessage, x.Class.FuncName())
	}
	c := x.int("color").Int64()
	rgb := [3]float32{float32(c>>16&0xff) / 255, float32(c>>8&0xff) / 255, float32(c&0xff) / 255}
	img := &imageVal{w: w, h: h}
	for range n {
		px := make([]float32, w*h*3)
		for k := range px {
			px[k] = rgb[k%3]
		}
		img.frames = append(img.frames, frame{px: px})
	}
	return []any{img}, nil, nil
}

func runImageInvert(x *Run) ([]any, *pyvalue.Dict, error) {
	img, err := x.images("image")
	if err != nil {
		return nil, nil, err
	}
	return []any{mapFrames(img, img.w, img.h, func(px []float32) []float32 {
		out := make([]float32, len(px))
		for k, v := range px {
			out[k] = 1 - v
		}
		return out
	})}, nil, nil
}

func runImageScale(x *Run) ([]any, *pyvalue.Dict, error) {
	img, err := x.images("image")
	if err != nil {
		return nil, nil, err
	}
	w, h := x.intSmall("width"), x.intSmall("height")
	if w == 0 && h == 0 {
		return []any{img}, nil, nil
	}
	if w == 0 {
		w = max(1, int(math.RoundToEven(float64(img.w)*float64(h)/float64(img.h))))
	} else if h == 0 {
		h = max(1, int(math.RoundToEven(float64(img.h)*float64(w)/float64(img.w))))
	}
	out, err := upscale(x, img, w, h, x.str("upscale_method"), x.str("crop"))
	if err != nil {
		return nil, nil, err
	}
	return []any{out}, nil, nil
}

func runImageScaleBy(x *Run) ([]any, *pyvalue.Dict, error) {
	img, err := x.images("image")
	if err != nil {
		return nil, nil, err
	}
	by := x.float("scale_by")
	w := int(math.RoundToEven(float64(img.w) * by))
	h := int(math.RoundToEven(float64(img.h) * by))
	out, err := upscale(x, img, w, h, x.str("upscale_method"), "disabled")
	if err != nil {
		return nil, nil, err
	}
	return []any{out}, nil, nil
}

// upscale is comfy.utils.common_upscale: an optional centre crop to the
// new aspect, then torch's interpolate (lanczos is PIL's in ComfyUI; the
// emulator uses its bicubic for it).
func upscale(x *Run, img *imageVal, w, h int, method, crop string) (*imageVal, error) {
	if w <= 0 || h <= 0 {
		return nil, Raise("RuntimeError", fmt.Sprintf("Input and output sizes should be greater than 0, but got input (H: %d, W: %d) output (H: %d, W: %d)", img.h, img.w, h, w), x.Class.FuncName())
	}
	if int64(w)*int64(h)*int64(len(img.frames)) > maxPixels {
		return nil, OutOfMemory(DefaultOOMMessage, x.Class.FuncName())
	}
	x0, y0, cw, ch := 0, 0, img.w, img.h
	if crop == "center" {
		oldAspect, newAspect := float64(img.w)/float64(img.h), float64(w)/float64(h)
		if oldAspect > newAspect {
			x0 = int(math.RoundToEven((float64(img.w) - float64(img.w)*(newAspect/oldAspect)) / 2))
		} else if oldAspect < newAspect {
			y0 = int(math.RoundToEven((float64(img.h) - float64(img.h)*(oldAspect/newAspect)) / 2))
		}
		cw, ch = img.w-2*x0, img.h-2*y0
	}
	return mapFrames(img, w, h, func(src []float32) []float32 {
		px := src
		if x0 != 0 || y0 != 0 {
			px = make([]float32, 0, cw*ch*3)
			for y := y0; y < y0+ch; y++ {
				px = append(px, src[3*(y*img.w+x0):3*(y*img.w+x0+cw)]...)
			}
		}
		return resample(px, cw, ch, w, h, method)
	}), nil
}

// resample is torch.nn.functional.interpolate of an RGB plane
// (align_corners=False), separably: rows first, then columns.
func resample(px []float32, sw, sh, dw, dh int, method string) []float32 {
	tmp := make([]float32, dw*sh*3)
	for y := range sh {
		for c := range 3 {
			line := make([]float32, sw)
			for x := range sw {
				line[x] = px[3*(y*sw+x)+c]
			}
			for x, v := range resample1(line, dw, method) {
				tmp[3*(y*dw+x)+c] = v
			}
		}
	}
	out := make([]float32, dw*dh*3)
	for x := range dw {
		for c := range 3 {
			line := make([]float32, sh)
			for y := range sh {
				line[y] = tmp[3*(y*dw+x)+c]
			}
			for y, v := range resample1(line, dh, method) {
				out[3*(y*dw+x)+c] = v
			}
		}
	}
	return out
}

func resample1(in []float32, n int, method string) []float32 {
	m := len(in)
	out := make([]float32, n)
	scale := float64(m) / float64(n)
	at := func(k int) float64 { return float64(in[min(max(k, 0), m-1)]) }
	for i := range out {
		switch method {
		case "nearest-exact":
			out[i] = in[min(int(math.Floor((float64(i)+0.5)*scale)), m-1)]
		case "area":
			// adaptive_avg_pool: the mean of [floor(i*m/n), ceil((i+1)*m/n)).
			a, b := i*m/n, ((i+1)*m+n-1)/n
			sum := 0.0
			for k := a; k < b; k++ {
				sum += float64(in[k])
			}
			out[i] = float32(sum / float64(b-a))
		case "bicubic", "lanczos":
			src := (float64(i)+0.5)*scale - 0.5
			k0 := int(math.Floor(src))
			t := src - float64(k0)
			const a = -0.75
			cub := func(d float64) float64 {
				d = math.Abs(d)
				switch {
				case d <= 1:
					return ((a+2)*d-(a+3))*d*d + 1
				case d < 2:
					return ((a*d-5*a)*d+8*a)*d - 4*a
				}
				return 0
			}
			v := 0.0
			for k := -1; k <= 2; k++ {
				v += at(k0+k) * cub(t-float64(k))
			}
			out[i] = float32(v)
		default: // bilinear
			src := max((float64(i)+0.5)*scale-0.5, 0)
			k0 := int(math.Floor(src))
			t := src - float64(k0)
			out[i] = float32(at(k0)*(1-t) + at(k0+1)*t)
		}
	}
	return out
}

func runImageBlur(x *Run) ([]any, *pyvalue.Dict, error) {
	img, err := x.images("image")
	if err != nil {
		return nil, nil, err
	}
	r := x.intSmall("blur_radius")
	if r == 0 {
		return []any{img}, nil, nil
	}
	if r >= img.w || r >= img.h {
		return nil, nil, Raise("RuntimeError", fmt.Sprintf("Argument #4: Padding size should be less than the corresponding input dimension, but got: padding (%d, %d) at dimension 3 of input [%d, 3, %d, %d]", r, r, len(img.frames), img.h, img.w), x.Class.FuncName())
	}
	sigma := x.float("sigma")
	k := 2*r + 1
	// gaussian_kernel: torch.linspace(-1, 1, k) on both axes.
	kern := make([]float64, k*k)
	sum := 0.0
	for i := range k {
		for j := range k {
			xi := -1 + 2*float64(i)/float64(k-1)
			yj := -1 + 2*float64(j)/float64(k-1)
			g := math.Exp(-(xi*xi + yj*yj) / (2 * sigma * sigma))
			kern[i*k+j] = g
			sum += g
		}
	}
	for i := range kern {
		kern[i] /= sum
	}
	reflect := func(v, n int) int {
		if v < 0 {
			return -v
		}
		if v >= n {
			return 2*(n-1) - v
		}
		return v
	}
	w, h := img.w, img.h
	return []any{mapFrames(img, w, h, func(px []float32) []float32 {
		out := make([]float32, len(px))
		for y := range h {
			for xx := range w {
				for c := range 3 {
					v := 0.0
					for i := range k {
						for j := range k {
							sy, sx := reflect(y+i-r, h), reflect(xx+j-r, w)
							v += kern[i*k+j] * float64(px[3*(sy*w+sx)+c])
						}
					}
					out[3*(y*w+xx)+c] = float32(v)
				}
			}
		}
		return out
	})}, nil, nil
}

func runSaveAnimatedPNG(x *Run) ([]any, *pyvalue.Dict, error) {
	img, err := x.images("images")
	if err != nil {
		return nil, nil, err
	}
	where := "SaveAnimatedPNG.execute"
	sp, err := x.Exec.SaveImagePath("output", x.str("filename_prefix"), img.w, img.h, where)
	if err != nil {
		return nil, nil, err
	}
	texts, err := x.pngTexts()
	if err != nil {
		return nil, nil, err
	}
	fps := x.float("fps")
	data, err := media.EncodeAPNG(x.frames(img), int(1000/fps), texts, x.intSmall("compress_level"))
	if err != nil {
		return nil, nil, Raise("OSError", err.Error(), where)
	}
	file := fmt.Sprintf("%s_%05d_.png", sp.Filename, sp.Counter)
	if err := x.Exec.WriteFile(filepath.Join(sp.Folder, file), data); err != nil {
		return nil, nil, Raise("OSError", err.Error(), where)
	}
	x.Exec.Saved(sp, sp.Counter+1)
	ui := pyvalue.NewDict("images", []any{pyvalue.NewDict("filename", file, "subfolder", sp.Subfolder, "type", "output")}, "animated", []any{true})
	return []any{}, ui, nil
}

func runPrimitive(x *Run) ([]any, *pyvalue.Dict, error) { return []any{x.Inputs["value"]}, nil, nil }

func runStringConcatenate(x *Run) ([]any, *pyvalue.Dict, error) {
	return []any{strings.Join([]string{x.str("string_a"), x.str("string_b")}, x.str("delimiter"))}, nil, nil
}

// noiseVal is RandomNoise's NOISE object.
type noiseVal struct {
	seed string
	repr string
}

func (n noiseVal) String() string { return n.repr }

func runRandomNoise(x *Run) ([]any, *pyvalue.Dict, error) {
	return []any{noiseVal{seed: x.int("noise_seed").String(), repr: pyObjectRepr("comfy_extras.nodes_custom_sampler.Noise_RandomNoise")}}, nil, nil
}

func runGetImageSize(x *Run) ([]any, *pyvalue.Dict, error) {
	img, err := x.images("image")
	if err != nil {
		return nil, nil, err
	}
	n := len(img.frames)
	if err := x.Exec.ProgressText(fmt.Sprintf("width: %d, height: %d\n batch size: %d", img.w, img.h, n)); err != nil {
		return nil, nil, err
	}
	return []any{i(int64(img.w)), i(int64(img.h)), i(int64(n))}, nil, nil
}

// runFidelityLongNode is testdata/realcomfy/fidelity_nodes: steps sleeps of
// delay seconds with a progress tick and a JPEG preview each, checking for
// an interrupt at every step; with check false one sleep of steps*delay
// that never looks at the flag.
func runFidelityLongNode(x *Run) ([]any, *pyvalue.Dict, error) {
	steps, size := x.intSmall("steps"), x.intSmall("size")
	seed := x.intSmall("seed")
	delay := time.Duration(x.float("delay") * float64(time.Second))
	out := func() []any {
		px := make([]float32, size*size*3)
		for k := range px {
			px[k] = float32(seed) / 255
		}
		return []any{&imageVal{w: size, h: size, frames: []frame{{px: px}}}}
	}
	if !pyvalue.Truth(x.Inputs["check"]) {
		// A node that never checks the flag: the sleep is its work.
		t := time.NewTimer(delay * time.Duration(steps))
		<-t.C
		return out(), nil, nil
	}
	hook := x.Exec.ProgressBar(steps, false)
	for step := 1; step <= steps; step++ {
		if err := x.Exec.Sleep(delay); err != nil {
			return nil, nil, err
		}
		st := step
		preview := func() []byte {
			px := make([]float32, size*size*3)
			for k := 0; k < len(px); k += 3 {
				px[k], px[k+1] = float32(seed)/255, float32(st*255/steps)/255
			}
			return previewOf(quantize(px, size, size))
		}
		if err := hook.Update(step, preview); err != nil {
			return nil, nil, err
		}
	}
	return out(), nil, nil
}

var primitiveIntMax = bigInt(strconv.FormatInt(math.MaxInt64, 10))

// weightFreeClasses are the classes of this file, in the order NewRegistry
// adds them after its own.
func weightFreeClasses() []*Class {
	imageIn := func(name string) Input { return Input{Name: name, Type: "IMAGE"} }
	imageInV3 := func(name string) Input { return Input{Name: name, Type: "IMAGE", Options: pyvalue.NewDict()} }
	methods := func(Host) []string { return []string{"nearest-exact", "bilinear", "area", "bicubic", "lanczos"} }
	return []*Class{
		{
			Name: "EmptyImage", DisplayName: "EmptyImage", PythonModule: "nodes", Category: "image",
			Inputs: []Input{
				{Name: "width", Type: "INT", Options: pyvalue.NewDict("default", i(512), "min", i(1), "max", i(maxResolution), "step", i(1))},
				{Name: "height", Type: "INT", Options: pyvalue.NewDict("default", i(512), "min", i(1), "max", i(maxResolution), "step", i(1))},
				{Name: "batch_size", Type: "INT", Options: pyvalue.NewDict("default", i(1), "min", i(1), "max", i(4096))},
				{Name: "color", Type: "INT", Options: pyvalue.NewDict("default", i(0), "min", i(0), "max", i(0xFFFFFF), "step", i(1), "display", "color")},
			},
			ReturnTypes: []string{"IMAGE"},
			Func:        runEmptyImage,
		},
		{
			Name: "ImageInvert", DisplayName: "Invert Image", PythonModule: "nodes", Category: "image",
			Inputs:      []Input{imageIn("image")},
			ReturnTypes: []string{"IMAGE"},
			Func:        runImageInvert,
		},
		{
			Name: "ImageScale", DisplayName: "Upscale Image", PythonModule: "nodes", Category: "image/upscaling",
			Inputs: []Input{
				imageIn("image"),
				{Name: "upscale_method", Combo: methods},
				{Name: "width", Type: "INT", Options: pyvalue.NewDict("default", i(512), "min", i(0), "max", i(maxResolution), "step", i(1))},
				{Name: "height", Type: "INT", Options: pyvalue.NewDict("default", i(512), "min", i(0), "max", i(maxResolution), "step", i(1))},
				{Name: "crop", Combo: func(Host) []string { return []string{"disabled", "center"} }},
			},
			ReturnTypes: []string{"IMAGE"},
			Func:        runImageScale,
		},
		{
			Name: "ImageScaleBy", DisplayName: "Upscale Image By", PythonModule: "nodes", Category: "image/upscaling",
			Inputs: []Input{
				imageIn("image"),
				{Name: "upscale_method", Combo: methods},
				{Name: "scale_by", Type: "FLOAT", Options: pyvalue.NewDict("default", 1.0, "min", 0.01, "max", 8.0, "step", 0.01)},
			},
			ReturnTypes: []string{"IMAGE"},
			Func:        runImageScaleBy,
		},
		{
			Name: "ImageBlur", PythonModule: "comfy_extras.nodes_post_processing", Category: "image/postprocessing", V3: true,
			Inputs: []Input{
				imageInV3("image"),
				{Name: "blur_radius", Type: "INT", Options: pyvalue.NewDict("default", i(1), "min", i(1), "max", i(31), "step", i(1))},
				{Name: "sigma", Type: "FLOAT", Options: pyvalue.NewDict("default", 1.0, "min", 0.1, "max", 10.0, "step", 0.1)},
			},
			ReturnTypes: []string{"IMAGE"},
			ReturnNames: []string{"IMAGE"},
			Func:        runImageBlur,
		},
		{
			Name: "SaveAnimatedPNG", PythonModule: "comfy_extras.nodes_images", Category: "image/animation", V3: true,
			Inputs: []Input{
				imageInV3("images"),
				{Name: "filename_prefix", Type: "STRING", Options: pyvalue.NewDict("default", "ComfyUI", "multiline", false)},
				{Name: "fps", Type: "FLOAT", Options: pyvalue.NewDict("default", 6.0, "min", 0.01, "max", 1000.0, "step", 0.01)},
				{Name: "compress_level", Type: "INT", Options: pyvalue.NewDict("default", i(4), "min", i(0), "max", i(9))},
			},
			Hidden:      imageOutputHidden,
			ReturnTypes: []string{},
			OutputNode:  true,
			Func:        runSaveAnimatedPNG,
		},
		{
			Name: "PrimitiveString", DisplayName: "String", PythonModule: "comfy_extras.nodes_primitive", Category: "utils/primitive", V3: true,
			Inputs:      []Input{{Name: "value", Type: "STRING", Options: pyvalue.NewDict("multiline", false)}},
			ReturnTypes: []string{"STRING"},
			ReturnNames: []string{"STRING"},
			Func:        runPrimitive,
		},
		{
			Name: "PrimitiveInt", DisplayName: "Int", PythonModule: "comfy_extras.nodes_primitive", Category: "utils/primitive", V3: true,
			Inputs: []Input{{Name: "value", Type: "INT", Options: pyvalue.NewDict("min", new(big.Int).Neg(primitiveIntMax),
				"max", primitiveIntMax, "control_after_generate", true)}},
			ReturnTypes: []string{"INT"},
			ReturnNames: []string{"INT"},
			Func:        runPrimitive,
		},
		{
			Name: "StringConcatenate", DisplayName: "Concatenate", PythonModule: "comfy_extras.nodes_string", Category: "utils/string", V3: true,
			Inputs: []Input{
				{Name: "string_a", Type: "STRING", Options: pyvalue.NewDict("multiline", true)},
				{Name: "string_b", Type: "STRING", Options: pyvalue.NewDict("multiline", true)},
				{Name: "delimiter", Type: "STRING", Options: pyvalue.NewDict("default", "", "multiline", false)},
			},
			ReturnTypes: []string{"STRING"},
			ReturnNames: []string{"STRING"},
			Func:        runStringConcatenate,
		},
		{
			Name: "RandomNoise", PythonModule: "comfy_extras.nodes_custom_sampler", Category: "sampling/custom_sampling/noise", V3: true,
			Inputs: []Input{{Name: "noise_seed", Type: "INT", Options: pyvalue.NewDict("default", i(0), "min", i(0),
				"max", bigInt("18446744073709551615"), "control_after_generate", true)}},
			ReturnTypes: []string{"NOISE"},
			ReturnNames: []string{"NOISE"},
			Func:        runRandomNoise,
		},
		{
			Name: "GetImageSize", DisplayName: "Get Image Size", PythonModule: "comfy_extras.nodes_images", Category: "image", V3: true,
			Description: "Returns width and height of the image, and passes it through unchanged.",
			Inputs:      []Input{imageInV3("image")},
			Hidden:      [][2]string{{"unique_id", "UNIQUE_ID"}},
			ReturnTypes: []string{"INT", "INT", "INT"},
			ReturnNames: []string{"width", "height", "batch_size"},
			Func:        runGetImageSize,
		},
		{
			Name: "FidelityLongNode", DisplayName: "Fidelity Long Node", PythonModule: "custom_nodes.fidelity_nodes", Category: "testing",
			Inputs: []Input{
				{Name: "steps", Type: "INT", Options: pyvalue.NewDict("default", i(5), "min", i(1), "max", i(1000))},
				{Name: "delay", Type: "FLOAT", Options: pyvalue.NewDict("default", 0.2, "min", 0.0, "max", 10.0, "step", 0.01)},
				{Name: "seed", Type: "INT", Options: pyvalue.NewDict("default", i(0), "min", i(0), "max", i(255))},
				{Name: "size", Type: "INT", Options: pyvalue.NewDict("default", i(8), "min", i(1), "max", i(64))},
				{Name: "check", Type: "BOOLEAN", Options: pyvalue.NewDict("default", true)},
			},
			ReturnTypes: []string{"IMAGE"},
			Func:        runFidelityLongNode,
		},
	}
}

// previewOf is how the server sends a ("JPEG", image, 512) preview:
// ImageOps.contain to fit 512x512 (nearest here), as JPEG of quality 95.
func previewOf(img *image.NRGBA) []byte {
	w, h := img.Bounds().Dx(), img.Bounds().Dy()
	pw, ph := 512, 512
	if w > h {
		ph = max(1, int(math.Round(float64(h)*512/float64(w))))
	} else if h > w {
		pw = max(1, int(math.Round(float64(w)*512/float64(h))))
	}
	out := image.NewNRGBA(image.Rect(0, 0, pw, ph))
	for y := range ph {
		for x := range pw {
			copy(out.Pix[out.PixOffset(x, y):out.PixOffset(x, y)+4], img.Pix[img.PixOffset(x*w/pw, y*h/ph):])
		}
	}
	var b bytes.Buffer
	_ = jpeg.Encode(&b, out, &jpeg.Options{Quality: 95})
	return b.Bytes()
}
