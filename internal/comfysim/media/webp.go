package media

import (
	"encoding/binary"
	"image"
)

// Lossless WebP: VP8L without transforms, and the animated container.

type bitWriter struct {
	buf   []byte
	acc   uint64
	nbits uint
}

func (b *bitWriter) write(v uint32, n uint) {
	b.acc |= uint64(v) << b.nbits
	b.nbits += n
	for b.nbits >= 8 {
		b.buf = append(b.buf, byte(b.acc))
		b.acc >>= 8
		b.nbits -= 8
	}
}

func (b *bitWriter) bytes() []byte {
	if b.nbits > 0 {
		b.buf = append(b.buf, byte(b.acc))
		b.acc, b.nbits = 0, 0
	}
	return b.buf
}

var rev8 = func() (t [256]uint32) {
	for i := range t {
		var r uint32
		for b := 0; b < 8; b++ {
			if i&(1<<b) != 0 {
				r |= 1 << (7 - b)
			}
		}
		t[i] = r
	}
	return t
}()

// writeFlat8Code writes a normal prefix code in which the first 256 of n
// symbols have length 8 (so symbol s has code s) and the rest length 0.
func writeFlat8Code(b *bitWriter, n int) {
	b.write(0, 1) // normal code
	// Code-length code: symbols 0 and 8 of length 1; order of lengths is
	// 17, 18, 0, 1, 2, 3, 4, 5, 16, 6, 7, 8 -> 12 entries.
	b.write(12-4, 4)
	order := []int{17, 18, 0, 1, 2, 3, 4, 5, 16, 6, 7, 8}
	for _, sym := range order {
		if sym == 0 || sym == 8 {
			b.write(1, 3)
		} else {
			b.write(0, 3)
		}
	}
	b.write(0, 1) // max_symbol = alphabet size
	for s := 0; s < n; s++ {
		if s < 256 {
			b.write(1, 1) // code-length symbol 8 has code "1"
		} else {
			b.write(0, 1) // code-length symbol 0 has code "0"
		}
	}
}

// vp8l returns a VP8L bitstream for an opaque image.
func vp8l(img *image.NRGBA) []byte {
	w, h := img.Rect.Dx(), img.Rect.Dy()
	b := &bitWriter{buf: make([]byte, 0, 5+w*h*3+128)}
	b.write(0x2f, 8)
	b.write(uint32(w-1), 14)
	b.write(uint32(h-1), 14)
	b.write(0, 1)             // alpha_is_used
	b.write(0, 3)             // version
	b.write(0, 1)             // no transform
	b.write(0, 1)             // no color cache
	b.write(0, 1)             // no meta prefix codes
	writeFlat8Code(b, 256+24) // green + length prefixes
	writeFlat8Code(b, 256)    // red
	writeFlat8Code(b, 256)    // blue
	// alpha: simple code, one 8-bit symbol 255
	b.write(1, 1)
	b.write(0, 1)
	b.write(1, 1)
	b.write(255, 8)
	// distance: simple code, one 1-bit symbol 0
	b.write(1, 1)
	b.write(0, 1)
	b.write(0, 1)
	b.write(0, 1)
	for y := 0; y < h; y++ {
		row := img.Pix[y*img.Stride:]
		for x := 0; x < w; x++ {
			p := row[4*x:]
			b.write(rev8[p[1]]|rev8[p[0]]<<8|rev8[p[2]]<<16, 24)
		}
	}
	return b.bytes()
}

func riffChunk(out []byte, fourcc string, payload []byte) []byte {
	out = append(out, fourcc...)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(payload)))
	out = append(out, payload...)
	if len(payload)%2 == 1 {
		out = append(out, 0)
	}
	return out
}

func riffWebP(chunks []byte) []byte {
	out := make([]byte, 0, 12+len(chunks))
	out = append(out, "RIFF"...)
	out = binary.LittleEndian.AppendUint32(out, uint32(4+len(chunks)))
	out = append(out, "WEBP"...)
	return append(out, chunks...)
}

// EncodeWebP is img as a still lossless WebP. Alpha is not written: the
// image is opaque, as ComfyUI's RGB images are.
func EncodeWebP(img *image.NRGBA) []byte {
	return riffWebP(riffChunk(nil, "VP8L", vp8l(img)))
}

func put24(out []byte, v int) []byte {
	return append(out, byte(v), byte(v>>8), byte(v>>16))
}

// EncodeAnimatedWebP writes one frame as a still WebP and several as an
// animation (VP8X + ANIM + ANMF), durationMs per frame, looping forever.
func EncodeAnimatedWebP(frames []*image.NRGBA, durationMs int) []byte {
	if len(frames) == 1 {
		return EncodeWebP(frames[0])
	}
	w, h := frames[0].Rect.Dx(), frames[0].Rect.Dy()
	vp8x := []byte{0x02, 0, 0, 0} // animation flag
	vp8x = put24(vp8x, w-1)
	vp8x = put24(vp8x, h-1)
	chunks := riffChunk(nil, "VP8X", vp8x)
	anim := binary.LittleEndian.AppendUint32(nil, 0xffffffff) // background
	anim = binary.LittleEndian.AppendUint16(anim, 0)          // loop forever
	chunks = riffChunk(chunks, "ANIM", anim)
	for _, f := range frames {
		fr := put24(nil, 0)
		fr = put24(fr, 0)
		fr = put24(fr, f.Rect.Dx()-1)
		fr = put24(fr, f.Rect.Dy()-1)
		fr = put24(fr, durationMs)
		fr = append(fr, 0x02) // no blending, no disposal
		fr = riffChunk(fr, "VP8L", vp8l(f))
		chunks = riffChunk(chunks, "ANMF", fr)
	}
	return riffWebP(chunks)
}
