package media

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"image"
)

// EncodeAPNG writes frames as an animated PNG, as PIL's save_all does for
// SaveAnimatedPNG: the tEXt chunks after IHDR, an acTL that loops forever,
// then per frame an fcTL (delayMS each) and its data, IDAT for the first
// and fdAT for the others. All frames must have the first one's size.
func EncodeAPNG(frames []*image.NRGBA, delayMS int, texts [][2]string, level int) ([]byte, error) {
	if len(frames) == 0 {
		return nil, fmt.Errorf("encode apng: no frames")
	}
	b := frames[0].Bounds()
	var out []byte
	seq := uint32(0)
	for k, f := range frames {
		if f.Bounds() != b {
			return nil, fmt.Errorf("encode apng: frame %d is %v, want %v", k, f.Bounds(), b)
		}
		var buf bytes.Buffer
		if err := WritePNG(&buf, f, level); err != nil {
			return nil, fmt.Errorf("encode apng: frame %d: %w", k, err)
		}
		chunks, err := pngChunks(buf.Bytes())
		if err != nil {
			return nil, fmt.Errorf("encode apng: frame %d: %w", k, err)
		}
		if k == 0 {
			out = append(out, buf.Bytes()[:8]...)
			out = appendPNGChunk(out, "IHDR", chunks[0].data)
			for _, t := range texts {
				payload := append(latin1(t[0]), 0)
				out = appendPNGChunk(out, "tEXt", append(payload, latin1(t[1])...))
			}
			actl := binary.BigEndian.AppendUint32(nil, uint32(len(frames)))
			out = appendPNGChunk(out, "acTL", binary.BigEndian.AppendUint32(actl, 0))
		}
		fctl := binary.BigEndian.AppendUint32(nil, seq)
		seq++
		fctl = binary.BigEndian.AppendUint32(fctl, uint32(b.Dx()))
		fctl = binary.BigEndian.AppendUint32(fctl, uint32(b.Dy()))
		fctl = binary.BigEndian.AppendUint32(fctl, 0)
		fctl = binary.BigEndian.AppendUint32(fctl, 0)
		fctl = binary.BigEndian.AppendUint16(fctl, uint16(delayMS))
		fctl = binary.BigEndian.AppendUint16(fctl, 1000)
		fctl = append(fctl, 0, 0) // dispose none, blend source
		out = appendPNGChunk(out, "fcTL", fctl)
		for _, c := range chunks {
			if c.typ != "IDAT" {
				continue
			}
			if k == 0 {
				out = appendPNGChunk(out, "IDAT", c.data)
			} else {
				out = appendPNGChunk(out, "fdAT", append(binary.BigEndian.AppendUint32(nil, seq), c.data...))
				seq++
			}
		}
	}
	return appendPNGChunk(out, "IEND", nil), nil
}

type pngChunk struct {
	typ  string
	data []byte
}

// pngChunks splits a PNG written by WritePNG into its chunks.
func pngChunks(data []byte) ([]pngChunk, error) {
	if len(data) < 8 {
		return nil, fmt.Errorf("png too short")
	}
	var out []pngChunk
	for p := 8; p < len(data); {
		if p+12 > len(data) {
			return nil, fmt.Errorf("png chunk at %d truncated", p)
		}
		n := int(binary.BigEndian.Uint32(data[p:]))
		if p+12+n > len(data) {
			return nil, fmt.Errorf("png chunk at %d truncated", p)
		}
		out = append(out, pngChunk{typ: string(data[p+4 : p+8]), data: data[p+8 : p+8+n]})
		p += 12 + n
	}
	return out, nil
}
