package node

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"image"
	"math/big"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
)

// The values flowing between emulated nodes. None of them holds pixels except
// images loaded from files: generated images are described by a key and drawn
// when a node writes a file, so cached outputs stay small. Their String is
// Python's str() of the real value, as PreviewAny and the current_inputs of
// execution_error show it.

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

// condVal is a CONDITIONING: the encoded text, the CLIP that encoded it and
// what later nodes did to it (FluxGuidance, ConditioningZeroOut), which
// changes what a sampler makes of it.
type condVal struct{ text, ckpt, mods string }

// content is what a sampler's result depends on.
func (c condVal) content() string { return c.text + c.mods }

func (c condVal) String() string {
	return "[[tensor([[[-0.3885,  0.0230, -0.0521,  ..., -0.4901, -0.3066,  0.0674]]]), {'pooled_output': tensor([[-0.0312,  0.4125,  0.1190,  ...,  0.0912, -0.2263,  0.2051]])}]]"
}

// latentVal is a LATENT dict; key identifies its content (0 = empty latent).
type latentVal struct {
	w, h, batch int
	channels    int // 0 means 4, EmptyLatentImage's
	key         uint64
	audio       bool
	seconds     float64
}

func (l latentVal) String() string {
	if l.audio {
		return fmt.Sprintf("{'samples': tensor([[[0., 0., 0.,  ..., 0., 0., 0.]]]), 'type': 'audio', 'downscale_ratio_temporal': 2048}  # shape [%d, 64, %d]", l.batch, latentAudioLength(l.seconds))
	}
	ch := l.channels
	if ch == 0 {
		ch = 4
	}
	return fmt.Sprintf("{'samples': tensor([[[[0., 0., 0.,  ..., 0., 0., 0.]]]])}  # shape [%d, %d, %d, %d]", l.batch, ch, l.h/8, l.w/8)
}

// frame is one image of a batch: generated from a key, decoded from a file,
// or computed by a pixel node (px, nodes_weightfree.go).
type frame struct {
	key uint64
	img *image.NRGBA
	px  []float32 // RGB floats in [0, 1] (out of range allowed), row by row
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
	if f.px != nil {
		return quantize(f.px, w, h)
	}
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
