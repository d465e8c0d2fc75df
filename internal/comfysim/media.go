package comfysim

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/jpeg"
	"image/png"
	"io"
	"math"
	"sync"
)

// Real file bytes for what the emulated nodes save: PNG (with ComfyUI's tEXt
// metadata), lossless WebP (VP8L, also animated), FLAC and MP4. The encoders
// are minimal but produce valid files that decoders accept.

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

// --- PNG ---

// pngBuffers reuses the encoders' zlib state: a fresh flate writer allocates
// about a megabyte, which dominated the cost of small saves.
type pngBuffers struct{ p sync.Pool }

func (b *pngBuffers) Get() *png.EncoderBuffer {
	e, _ := b.p.Get().(*png.EncoderBuffer)
	return e
}

func (b *pngBuffers) Put(e *png.EncoderBuffer) { b.p.Put(e) }

var pngEncoder = png.Encoder{
	// Fast compression keeps 512x512 saves cheap; ComfyUI's level 4 only
	// changes the size, not the pixels.
	CompressionLevel: png.BestSpeed,
	BufferPool:       &pngBuffers{},
}

func encodePNGTo(w io.Writer, img image.Image, _ int) error {
	return pngEncoder.Encode(w, img)
}

// encodePNG writes img as PNG with tEXt chunks (keyword, text) after IHDR,
// where PIL's PngInfo puts them.
func encodePNG(img image.Image, texts [][2]string, level int) ([]byte, error) {
	var buf bytes.Buffer
	if err := encodePNGTo(&buf, img, level); err != nil {
		return nil, err
	}
	if len(texts) == 0 {
		return buf.Bytes(), nil
	}
	data := buf.Bytes()
	const ihdrEnd = 8 + 8 + 13 + 4
	out := make([]byte, 0, len(data)+256)
	out = append(out, data[:ihdrEnd]...)
	for _, t := range texts {
		payload := append(latin1(t[0]), 0)
		payload = append(payload, latin1(t[1])...)
		out = appendPNGChunk(out, "tEXt", payload)
	}
	return append(out, data[ihdrEnd:]...), nil
}

func latin1(s string) []byte {
	b := make([]byte, 0, len(s))
	for _, r := range s {
		if r > 0xff {
			r = '?'
		}
		b = append(b, byte(r))
	}
	return b
}

func appendPNGChunk(out []byte, typ string, payload []byte) []byte {
	out = binary.BigEndian.AppendUint32(out, uint32(len(payload)))
	start := len(out)
	out = append(out, typ...)
	out = append(out, payload...)
	return binary.BigEndian.AppendUint32(out, crc32.ChecksumIEEE(out[start:]))
}

// --- WebP (lossless VP8L without transforms) ---

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

// encodeWebP is a still lossless WebP.
func encodeWebP(img *image.NRGBA) []byte {
	return riffWebP(riffChunk(nil, "VP8L", vp8l(img)))
}

func put24(out []byte, v int) []byte {
	return append(out, byte(v), byte(v>>8), byte(v>>16))
}

// encodeAnimatedWebP writes one frame as a still WebP and several as an
// animation (VP8X + ANIM + ANMF), durationMs per frame, looping forever.
func encodeAnimatedWebP(frames []*image.NRGBA, durationMs int) []byte {
	if len(frames) == 1 {
		return encodeWebP(frames[0])
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

// --- FLAC (16-bit, VERBATIM subframes) ---

var crc8Table = func() (t [256]byte) {
	for i := range t {
		c := byte(i)
		for b := 0; b < 8; b++ {
			if c&0x80 != 0 {
				c = c<<1 ^ 0x07
			} else {
				c <<= 1
			}
		}
		t[i] = c
	}
	return t
}()

var crc16Table = func() (t [256]uint16) {
	for i := range t {
		c := uint16(i) << 8
		for b := 0; b < 8; b++ {
			if c&0x8000 != 0 {
				c = c<<1 ^ 0x8005
			} else {
				c <<= 1
			}
		}
		t[i] = c
	}
	return t
}()

func crc8(b []byte) byte {
	var c byte
	for _, x := range b {
		c = crc8Table[c^x]
	}
	return c
}

func crc16(b []byte) uint16 {
	var c uint16
	for _, x := range b {
		c = c<<8 ^ crc16Table[byte(c>>8)^x]
	}
	return c
}

// utf8Coded is FLAC's "UTF-8" coding of a frame number.
func utf8Coded(v uint64) []byte {
	if v < 0x80 {
		return []byte{byte(v)}
	}
	n := 2
	for v >= 1<<(5*n+1) && n < 7 {
		n++
	}
	out := make([]byte, n)
	for k := n - 1; k > 0; k-- {
		out[k] = 0x80 | byte(v&0x3f)
		v >>= 6
	}
	out[0] = byte(0xff<<(8-n)) | byte(v)
	return out
}

const flacBlock = 4096

// encodeFLAC writes a tone whose pitch depends on key, with Vorbis comments.
func encodeFLAC(rate, channels, samples int, key uint64, comments [][2]string) []byte {
	var out bytes.Buffer
	out.WriteString("fLaC")
	// STREAMINFO
	si := make([]byte, 0, 34)
	si = binary.BigEndian.AppendUint16(si, flacBlock)
	si = binary.BigEndian.AppendUint16(si, flacBlock)
	si = append(si, 0, 0, 0, 0, 0, 0) // min/max frame size unknown
	packed := uint64(rate)<<44 | uint64(channels-1)<<41 | uint64(16-1)<<36 | uint64(samples)&(1<<36-1)
	si = binary.BigEndian.AppendUint64(si, packed)
	si = append(si, make([]byte, 16)...) // MD5 unknown
	out.Write([]byte{0x00, 0, 0, byte(len(si))})
	out.Write(si)
	// VORBIS_COMMENT (last metadata block)
	vc := binary.LittleEndian.AppendUint32(nil, uint32(len("comfysim")))
	vc = append(vc, "comfysim"...)
	vc = binary.LittleEndian.AppendUint32(vc, uint32(len(comments)))
	for _, c := range comments {
		s := c[0] + "=" + c[1]
		vc = binary.LittleEndian.AppendUint32(vc, uint32(len(s)))
		vc = append(vc, s...)
	}
	out.Write([]byte{0x80 | 4, byte(len(vc) >> 16), byte(len(vc) >> 8), byte(len(vc))})
	out.Write(vc)

	freq := 220 + float64(key%660)
	rateCode := byte(0)
	switch rate {
	case 44100:
		rateCode = 0x9
	case 48000:
		rateCode = 0xa
	}
	for start, n := 0, 0; start < samples; start, n = start+flacBlock, n+1 {
		size := min(flacBlock, samples-start)
		hdr := []byte{0xff, 0xf8}
		sizeCode := byte(0xc) // 4096
		if size != flacBlock {
			sizeCode = 0x7 // 16-bit size-1 follows
		}
		hdr = append(hdr, sizeCode<<4|rateCode)
		hdr = append(hdr, byte(channels-1)<<4|0x4<<1) // independent, 16 bit
		hdr = append(hdr, utf8Coded(uint64(n))...)
		if sizeCode == 0x7 {
			hdr = binary.BigEndian.AppendUint16(hdr, uint16(size-1))
		}
		hdr = append(hdr, crc8(hdr))
		fr := hdr
		for ch := 0; ch < channels; ch++ {
			fr = append(fr, 0x02) // VERBATIM, no wasted bits
			phase := float64(ch) * 0.5
			for k := 0; k < size; k++ {
				t := float64(start+k) / float64(rate)
				v := int16(8000 * math.Sin(2*math.Pi*freq*t+phase))
				fr = binary.BigEndian.AppendUint16(fr, uint16(v))
			}
		}
		fr = binary.BigEndian.AppendUint16(fr, crc16(fr))
		out.Write(fr)
	}
	return out.Bytes()
}

// --- MP4 (Motion JPEG track) ---

func box(typ string, parts ...[]byte) []byte {
	n := 8
	for _, p := range parts {
		n += len(p)
	}
	out := make([]byte, 0, n)
	out = binary.BigEndian.AppendUint32(out, uint32(n))
	out = append(out, typ...)
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func u32s(vs ...uint32) []byte {
	out := make([]byte, 0, 4*len(vs))
	for _, v := range vs {
		out = binary.BigEndian.AppendUint32(out, v)
	}
	return out
}

var unityMatrix = u32s(0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)

// encodeMJPEGMP4 writes frames as an MP4 with one Motion-JPEG video track.
func encodeMJPEGMP4(frames []*image.NRGBA, fps float64) ([]byte, error) {
	if fps <= 0 || math.IsNaN(fps) || math.IsInf(fps, 0) {
		fps = 24
	}
	var samples [][]byte
	for _, f := range frames {
		var b bytes.Buffer
		if err := jpeg.Encode(&b, f, &jpeg.Options{Quality: 90}); err != nil {
			return nil, err
		}
		samples = append(samples, b.Bytes())
	}
	w, h := frames[0].Rect.Dx(), frames[0].Rect.Dy()
	timescale := uint32(math.Round(fps * 1000))
	if timescale == 0 {
		timescale = 1
	}
	const delta = 1000
	n := uint32(len(samples))
	mediaDur := n * delta
	movieDur := uint32(math.Round(float64(n) * 1000 / fps))

	ftyp := box("ftyp", []byte("isom"), u32s(0x200), []byte("isomiso2mp41"))
	buildMoov := func(mdatOffset uint32) []byte {
		mvhd := box("mvhd", u32s(0, 0, 0, 1000, movieDur, 0x00010000), []byte{0x01, 0x00}, make([]byte, 10), unityMatrix, make([]byte, 24), u32s(2))
		tkhd := box("tkhd", u32s(0x00000003, 0, 0, 1, 0, movieDur, 0, 0), []byte{0, 0, 0, 0, 0, 0, 0, 0}, unityMatrix, u32s(uint32(w)<<16, uint32(h)<<16))
		mdhd := box("mdhd", u32s(0, 0, 0, timescale, mediaDur), []byte{0x55, 0xc4, 0, 0})
		hdlr := box("hdlr", u32s(0, 0), []byte("vide"), make([]byte, 12), []byte("VideoHandler\x00"))
		vmhd := box("vmhd", u32s(1), make([]byte, 8))
		dinf := box("dinf", box("dref", u32s(0, 1), box("url ", u32s(1))))
		entry := make([]byte, 0, 78)
		entry = append(entry, make([]byte, 6)...)
		entry = binary.BigEndian.AppendUint16(entry, 1) // data_reference_index
		entry = append(entry, make([]byte, 16)...)
		entry = binary.BigEndian.AppendUint16(entry, uint16(w))
		entry = binary.BigEndian.AppendUint16(entry, uint16(h))
		entry = append(entry, u32s(0x00480000, 0x00480000, 0)...)
		entry = binary.BigEndian.AppendUint16(entry, 1) // frame_count
		name := make([]byte, 32)
		name[0] = byte(copy(name[1:], "Photo - JPEG"))
		entry = append(entry, name...)
		entry = append(entry, 0x00, 0x18, 0xff, 0xff)
		stsd := box("stsd", u32s(0, 1), box("jpeg", entry))
		stts := box("stts", u32s(0, 1, n, delta))
		stsc := box("stsc", u32s(0, 1, 1, n, 1))
		sizes := u32s(0, 0, n)
		for _, s := range samples {
			sizes = binary.BigEndian.AppendUint32(sizes, uint32(len(s)))
		}
		stsz := box("stsz", sizes)
		stco := box("stco", u32s(0, 1, mdatOffset))
		stbl := box("stbl", stsd, stts, stsc, stsz, stco)
		minf := box("minf", vmhd, dinf, stbl)
		mdia := box("mdia", mdhd, hdlr, minf)
		trak := box("trak", tkhd, mdia)
		return box("moov", mvhd, trak)
	}
	moovLen := len(buildMoov(0))
	mdatOffset := uint32(len(ftyp) + moovLen + 8)
	moov := buildMoov(mdatOffset)
	mdat := box("mdat", bytes.Join(samples, nil))
	out := make([]byte, 0, len(ftyp)+len(moov)+len(mdat))
	out = append(out, ftyp...)
	out = append(out, moov...)
	return append(out, mdat...), nil
}
