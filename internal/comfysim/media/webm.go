package media

import (
	"bytes"
	"encoding/binary"
	"image"
	"image/jpeg"
	"math"
)

// WebM: a Matroska file with one video track.

// ebml encodes one element: its id (with its length marker), its size as
// an 8-byte vint, and its payload.
func ebml(id uint32, payload ...[]byte) []byte {
	n := 0
	for _, p := range payload {
		n += len(p)
	}
	var idb []byte
	switch {
	case id > 0xFFFFFF:
		idb = binary.BigEndian.AppendUint32(nil, id)
	case id > 0xFFFF:
		idb = []byte{byte(id >> 16), byte(id >> 8), byte(id)}
	case id > 0xFF:
		idb = []byte{byte(id >> 8), byte(id)}
	default:
		idb = []byte{byte(id)}
	}
	out := append(idb, 0x01)
	out = append(out, byte(n>>48), byte(n>>40), byte(n>>32), byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	for _, p := range payload {
		out = append(out, p...)
	}
	return out
}

func ebmlUint(id uint32, v uint64) []byte {
	b := binary.BigEndian.AppendUint64(nil, v)
	for len(b) > 1 && b[0] == 0 {
		b = b[1:]
	}
	return ebml(id, b)
}

func ebmlString(id uint32, s string) []byte { return ebml(id, []byte(s)) }

func ebmlFloat(id uint32, f float64) []byte {
	return ebml(id, binary.BigEndian.AppendUint64(nil, math.Float64bits(f)))
}

// EncodeWebM writes frames as a WebM (Matroska) file with one video track.
// The frames are JPEGs (codec V_MJPEG): real ComfyUI writes VP9 or AV1,
// which the emulator has no encoder for; the container, the MIME type and
// the sniffed signature are those of a WebM file. fps is 24 when it is not a
// positive number.
func EncodeWebM(frames []*image.NRGBA, fps float64) ([]byte, error) {
	if fps <= 0 || math.IsNaN(fps) || math.IsInf(fps, 0) {
		fps = 24
	}
	header := ebml(0x1A45DFA3,
		ebmlUint(0x4286, 1), ebmlUint(0x42F7, 1), ebmlUint(0x42F2, 4), ebmlUint(0x42F3, 8),
		ebmlString(0x4282, "webm"), ebmlUint(0x4287, 4), ebmlUint(0x4285, 2))
	w, h := frames[0].Rect.Dx(), frames[0].Rect.Dy()
	durMs := float64(len(frames)) * 1000 / fps
	info := ebml(0x1549A966, ebmlUint(0x2AD7B1, 1_000_000), ebmlString(0x4D80, "comfysim"),
		ebmlString(0x5741, "comfysim"), ebmlFloat(0x4489, durMs))
	tracks := ebml(0x1654AE6B, ebml(0xAE, ebmlUint(0xD7, 1), ebmlUint(0x73C5, 1), ebmlUint(0x83, 1),
		ebmlString(0x86, "V_MJPEG"), ebml(0xE0, ebmlUint(0xB0, uint64(w)), ebmlUint(0xBA, uint64(h)))))
	var clusters [][]byte
	var blocks [][]byte
	clusterStart := 0
	flush := func() {
		if len(blocks) > 0 {
			parts := append([][]byte{ebmlUint(0xE7, uint64(clusterStart))}, blocks...)
			clusters = append(clusters, ebml(0x1F43B675, parts...))
			blocks = nil
		}
	}
	for k, f := range frames {
		var jb bytes.Buffer
		if err := jpeg.Encode(&jb, f, &jpeg.Options{Quality: 90}); err != nil {
			return nil, err
		}
		t := int(math.Round(float64(k) * 1000 / fps))
		if t-clusterStart > 30000 {
			flush()
			clusterStart = t
		}
		rel := int16(t - clusterStart)
		block := []byte{0x81, byte(uint16(rel) >> 8), byte(rel), 0x80}
		blocks = append(blocks, ebml(0xA3, block, jb.Bytes()))
	}
	flush()
	segment := ebml(0x18538067, append([][]byte{info, tracks}, clusters...)...)
	return append(header, segment...), nil
}
