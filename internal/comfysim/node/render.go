package node

import (
	"bytes"
	"image"
	"image/jpeg"
	"math"
)

// What generated media look like. The emulator runs no model: an image is a
// picture drawn from the key of the values that produced it, a waveform a
// tone whose pitch the key sets, so that outputs depend on every input.

// renderImage draws the deterministic picture of a generated image: a
// diagonal two-colour gradient with stripes, all derived from key.
func renderImage(w, h int, key uint64) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	if w <= 0 || h <= 0 {
		return img
	}
	c0 := [3]int{int(key & 0xff), int(key >> 8 & 0xff), int(key >> 16 & 0xff)}
	c1 := [3]int{int(key >> 24 & 0xff), int(key >> 32 & 0xff), int(key >> 40 & 0xff)}
	fx := int(key>>48&7) + 1
	fy := int(key>>51&7) + 1
	span := w + h
	for y := 0; y < h; y++ {
		row := img.Pix[y*img.Stride : y*img.Stride+4*w]
		for x := 0; x < w; x++ {
			t := (x + y) * 255 / span
			stripe := ((x*fx + y*fy) * 16 / span) & 1 * 24
			p := row[4*x : 4*x+4 : 4*x+4]
			p[0] = byte(clamp8(c0[0] + (c1[0]-c0[0])*t/255 + stripe))
			p[1] = byte(clamp8(c0[1] + (c1[1]-c0[1])*t/255 + stripe))
			p[2] = byte(clamp8(c0[2] + (c1[2]-c0[2])*t/255 - stripe))
			p[3] = 0xff
		}
	}
	return img
}

func clamp8(v int) int {
	if v < 0 {
		return 0
	}
	if v > 255 {
		return 255
	}
	return v
}

// previewJPEG is a sampler preview: the latent-size picture at partial
// progress, scaled like ImageOps.contain to fit 512x512, as JPEG.
func previewJPEG(w, h int, key uint64, step, steps int) []byte {
	lw, lh := max(w/8, 1), max(h/8, 1)
	pw, ph := 512, 512
	if lw*512 > lh*512 || lw > lh {
		ph = int(math.Round(float64(lh) / float64(lw) * 512))
	} else if lw < lh {
		pw = int(math.Round(float64(lw) / float64(lh) * 512))
	}
	img := renderImage(pw, ph, key)
	k := 256 * step / max(steps, 1)
	for p := 0; p < len(img.Pix); p += 4 {
		for c := 0; c < 3; c++ {
			img.Pix[p+c] = byte((int(img.Pix[p+c])*k + 128*(256-k)) >> 8)
		}
	}
	var buf bytes.Buffer
	_ = jpeg.Encode(&buf, img, &jpeg.Options{Quality: 95})
	return buf.Bytes()
}

// tone is the waveform of a generated audio clip: per channel, samples
// 16-bit samples of a sine whose pitch depends on key, the channels a
// half radian apart.
func tone(rate, channels, samples int, key uint64) [][]int16 {
	freq := 220 + float64(key%660)
	pcm := make([][]int16, channels)
	for ch := range pcm {
		phase := float64(ch) * 0.5
		pcm[ch] = make([]int16, samples)
		for k := range pcm[ch] {
			t := float64(k) / float64(rate)
			pcm[ch][k] = int16(8000 * math.Sin(2*math.Pi*freq*t+phase))
		}
	}
	return pcm
}
