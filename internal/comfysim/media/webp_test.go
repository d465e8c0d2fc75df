package media_test

import (
	"encoding/binary"
	"image"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/media"
)

type riffChunk struct {
	fourcc string
	data   []byte
}

// riffChunks splits a RIFF payload into chunks (padded to even sizes).
func riffChunks(t *testing.T, b []byte) []riffChunk {
	t.Helper()
	var out []riffChunk
	for len(b) > 0 {
		require.GreaterOrEqual(t, len(b), 8)
		n := int(binary.LittleEndian.Uint32(b[4:]))
		out = append(out, riffChunk{string(b[:4]), b[8 : 8+n]})
		b = b[8+n+n%2:]
	}
	return out
}

// webpChunks checks the RIFF/WEBP header and returns the top-level chunks.
func webpChunks(t *testing.T, b []byte) []riffChunk {
	t.Helper()
	require.Equal(t, "RIFF", string(b[:4]))
	require.Equal(t, len(b)-8, int(binary.LittleEndian.Uint32(b[4:])))
	require.Equal(t, "WEBP", string(b[8:12]))
	return riffChunks(t, b[12:])
}

// bitReader reads VP8L's LSB-first bit stream.
type bitReader struct {
	b   []byte
	pos int
}

func (r *bitReader) read(n int) uint32 {
	var v uint32
	for k := 0; k < n; k++ {
		bit := uint32(r.b[r.pos/8]>>(r.pos%8)) & 1
		v |= bit << k
		r.pos++
	}
	return v
}

// prefixCode is a canonical prefix code: code length and code per symbol.
type prefixCode struct {
	single int // the only symbol of a zero-bit code, or -1
	lens   []int
	codes  []int
}

func canonical(lens []int) prefixCode {
	c := prefixCode{single: -1, lens: lens, codes: make([]int, len(lens))}
	code := 0
	for l := 1; l <= 15; l++ {
		for s, sl := range lens {
			if sl == l {
				c.codes[s] = code
				code++
			}
		}
		code <<= 1
	}
	return c
}

func (c prefixCode) decode(t *testing.T, r *bitReader) int {
	if c.single >= 0 {
		return c.single
	}
	code := 0
	for l := 1; l <= 15; l++ {
		code = code<<1 | int(r.read(1))
		for s, sl := range c.lens {
			if sl == l && c.codes[s] == code {
				return s
			}
		}
	}
	t.Fatal("no prefix code matches")
	return 0
}

// readCode reads a simple or normal prefix code for an alphabet of n
// symbols (code lengths 0 to 15 only, no repeat codes).
func readCode(t *testing.T, r *bitReader, n int) prefixCode {
	t.Helper()
	if r.read(1) == 1 { // simple
		require.Equal(t, uint32(0), r.read(1), "one symbol")
		if r.read(1) == 1 {
			return prefixCode{single: int(r.read(8))}
		}
		return prefixCode{single: int(r.read(1))}
	}
	order := []int{17, 18, 0, 1, 2, 3, 4, 5, 16, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
	clLens := make([]int, 19)
	count := int(r.read(4)) + 4
	for k := 0; k < count; k++ {
		clLens[order[k]] = int(r.read(3))
	}
	cl := canonical(clLens)
	require.Equal(t, uint32(0), r.read(1), "max_symbol is the alphabet size")
	lens := make([]int, n)
	for s := range lens {
		l := cl.decode(t, r)
		require.Less(t, l, 16, "no repeat codes")
		lens[s] = l
	}
	return canonical(lens)
}

// decodeVP8L decodes the subset of VP8L that EncodeWebP writes: no
// transforms, no colour cache, one group of prefix codes, literals only.
func decodeVP8L(t *testing.T, b []byte) *image.NRGBA {
	t.Helper()
	r := &bitReader{b: b}
	require.Equal(t, uint32(0x2f), r.read(8), "signature")
	w, h := int(r.read(14))+1, int(r.read(14))+1
	r.read(1) // alpha_is_used
	require.Equal(t, uint32(0), r.read(3), "version")
	require.Equal(t, uint32(0), r.read(1), "no transform")
	require.Equal(t, uint32(0), r.read(1), "no colour cache")
	require.Equal(t, uint32(0), r.read(1), "no meta prefix codes")
	green := readCode(t, r, 256+24)
	red, blue, alpha := readCode(t, r, 256), readCode(t, r, 256), readCode(t, r, 256)
	readCode(t, r, 40) // distance
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for p := 0; p < len(img.Pix); p += 4 {
		g := green.decode(t, r)
		require.Less(t, g, 256, "literal")
		img.Pix[p+1] = byte(g)
		img.Pix[p] = byte(red.decode(t, r))
		img.Pix[p+2] = byte(blue.decode(t, r))
		img.Pix[p+3] = byte(alpha.decode(t, r))
	}
	return img
}

func TestEncodeWebPIsLossless(t *testing.T) {
	t.Parallel()
	img := frames(1, 9, 4)[0]
	chunks := webpChunks(t, media.EncodeWebP(img))
	require.Len(t, chunks, 1)
	require.Equal(t, "VP8L", chunks[0].fourcc)
	require.Equal(t, img, decodeVP8L(t, chunks[0].data))

	// Alpha is not written: the picture comes back opaque.
	img.Pix[3] = 0x10
	got := decodeVP8L(t, webpChunks(t, media.EncodeWebP(img))[0].data)
	require.Equal(t, byte(0xff), got.Pix[3])
}

func TestEncodeAnimatedWebP(t *testing.T) {
	t.Parallel()
	fs := frames(3, 5, 4)
	chunks := webpChunks(t, media.EncodeAnimatedWebP(fs, 125))
	require.Len(t, chunks, 2+len(fs))
	require.Equal(t, "VP8X", chunks[0].fourcc)
	require.Equal(t, []byte{0x02, 0, 0, 0, 4, 0, 0, 3, 0, 0}, chunks[0].data, "animation flag, canvas 5x4")
	require.Equal(t, "ANIM", chunks[1].fourcc)
	require.Equal(t, []byte{0xff, 0xff, 0xff, 0xff, 0, 0}, chunks[1].data, "background, loop forever")
	for k, c := range chunks[2:] {
		require.Equal(t, "ANMF", c.fourcc)
		u24 := func(o int) int { return int(c.data[o]) | int(c.data[o+1])<<8 | int(c.data[o+2])<<16 }
		require.Equal(t, []int{0, 0, 4, 3, 125}, []int{u24(0), u24(3), u24(6), u24(9), u24(12)}, "offset, size-1, duration")
		require.Equal(t, byte(0x02), c.data[15], "no blending, no disposal")
		inner := riffChunks(t, c.data[16:])
		require.Len(t, inner, 1)
		require.Equal(t, "VP8L", inner[0].fourcc)
		require.Equal(t, fs[k], decodeVP8L(t, inner[0].data), "frame %d", k)
	}

	// One frame is a still picture.
	require.Equal(t, media.EncodeWebP(fs[0]), media.EncodeAnimatedWebP(fs[:1], 125))
}
