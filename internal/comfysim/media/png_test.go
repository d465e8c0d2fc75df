package media_test

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"image/color"
	"image/png"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/media"
)

type pngChunk struct {
	typ  string
	data []byte
}

// pngChunks splits a PNG file into its chunks, checking every CRC.
func pngChunks(t *testing.T, b []byte) []pngChunk {
	t.Helper()
	require.Equal(t, "\x89PNG\r\n\x1a\n", string(b[:8]))
	var out []pngChunk
	for b = b[8:]; len(b) > 0; {
		n := int(binary.BigEndian.Uint32(b))
		body := b[4 : 8+n]
		require.Equal(t, crc32.ChecksumIEEE(body), binary.BigEndian.Uint32(b[8+n:]), "CRC of %s", body[:4])
		out = append(out, pngChunk{string(body[:4]), body[4:]})
		b = b[12+n:]
	}
	return out
}

func TestEncodePNGWritesTextAfterIHDR(t *testing.T) {
	t.Parallel()
	img := frames(1, 7, 5)[0]
	b, err := media.EncodePNG(img, [][2]string{{"prompt", `{"a": "é"}`}, {"workflow", "x€y"}}, 4)
	require.NoError(t, err)

	chunks := pngChunks(t, b)
	require.Equal(t, "IHDR", chunks[0].typ)
	require.Equal(t, pngChunk{"tEXt", []byte("prompt\x00{\"a\": \"\xe9\"}")}, chunks[1], "Latin-1 text")
	require.Equal(t, pngChunk{"tEXt", []byte("workflow\x00x?y")}, chunks[2], "outside Latin-1: '?'")
	require.Equal(t, "IEND", chunks[len(chunks)-1].typ)

	got, err := png.Decode(bytes.NewReader(b))
	require.NoError(t, err)
	require.Equal(t, img.Bounds(), got.Bounds())
	for y := 0; y < 5; y++ {
		for x := 0; x < 7; x++ {
			r, g, b, a := got.At(x, y).RGBA()
			require.Equal(t, img.NRGBAAt(x, y), color.NRGBA{uint8(r >> 8), uint8(g >> 8), uint8(b >> 8), uint8(a >> 8)}, "(%d, %d)", x, y)
		}
	}
}

func TestEncodePNGWithoutTexts(t *testing.T) {
	t.Parallel()
	img := frames(1, 3, 3)[0]
	b, err := media.EncodePNG(img, nil, 1)
	require.NoError(t, err)
	var w bytes.Buffer
	require.NoError(t, media.WritePNG(&w, img, 1))
	require.Equal(t, w.Bytes(), b)
	for _, c := range pngChunks(t, b) {
		require.NotEqual(t, "tEXt", c.typ)
	}
}
