package media

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/png"
	"io"
	"sync"
)

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

// WritePNG writes img as PNG. level is the compress_level ComfyUI asks for;
// the encoder always uses png.BestSpeed, which changes only the size.
func WritePNG(w io.Writer, img image.Image, _ int) error {
	return pngEncoder.Encode(w, img)
}

// EncodePNG writes img as PNG with tEXt chunks (keyword, text) after IHDR,
// where PIL's PngInfo puts them; characters outside Latin-1 become '?'.
func EncodePNG(img image.Image, texts [][2]string, level int) ([]byte, error) {
	var buf bytes.Buffer
	if err := WritePNG(&buf, img, level); err != nil {
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
