package media_test

import (
	"bytes"
	"encoding/binary"
	"image/jpeg"
	"math"
	"math/bits"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/media"
)

// ebmlElement is one EBML element: its id (with its length marker) and
// payload.
type ebmlElement struct {
	id   uint32
	data []byte
}

// ebmlElements splits b into elements.
func ebmlElements(t *testing.T, b []byte) []ebmlElement {
	t.Helper()
	var out []ebmlElement
	for len(b) > 0 {
		idLen := bits.LeadingZeros8(b[0]) + 1
		require.LessOrEqual(t, idLen, 4)
		var id uint32
		for _, c := range b[:idLen] {
			id = id<<8 | uint32(c)
		}
		b = b[idLen:]
		sizeLen := bits.LeadingZeros8(b[0]) + 1
		size := uint64(b[0] & (0xff >> sizeLen))
		for _, c := range b[1:sizeLen] {
			size = size<<8 | uint64(c)
		}
		b = b[sizeLen:]
		out = append(out, ebmlElement{id, b[:size]})
		b = b[size:]
	}
	return out
}

// child returns the first child of e with id.
func child(t *testing.T, e []byte, id uint32) []byte {
	t.Helper()
	for _, c := range ebmlElements(t, e) {
		if c.id == id {
			return c.data
		}
	}
	t.Fatalf("no element %x", id)
	return nil
}

func ebmlUint(b []byte) uint64 {
	var v uint64
	for _, c := range b {
		v = v<<8 | uint64(c)
	}
	return v
}

func TestEncodeWebM(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		frames       int
		fps          float64
		wantClusters int
	}{
		{name: "short clip", frames: 3, fps: 12, wantClusters: 1},
		// A cluster spans at most 30 s.
		{name: "long clip", frames: 40, fps: 1, wantClusters: 2},
		{name: "zero fps is 24", frames: 2, fps: 0, wantClusters: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fs := frames(tt.frames, 5, 4)
			b, err := media.EncodeWebM(fs, tt.fps)
			require.NoError(t, err)
			require.Equal(t, "video/webm", http.DetectContentType(b))
			fps := tt.fps
			if fps == 0 {
				fps = 24
			}

			top := ebmlElements(t, b)
			require.Len(t, top, 2)
			require.Equal(t, uint32(0x1A45DFA3), top[0].id, "EBML header")
			require.Equal(t, "webm", string(child(t, top[0].data, 0x4282)), "DocType")
			require.Equal(t, uint32(0x18538067), top[1].id, "Segment")
			seg := top[1].data

			info := child(t, seg, 0x1549A966)
			require.Equal(t, uint64(1_000_000), ebmlUint(child(t, info, 0x2AD7B1)), "TimecodeScale: ms")
			require.InDelta(t, float64(tt.frames)*1000/fps, math.Float64frombits(binary.BigEndian.Uint64(child(t, info, 0x4489))), 1e-9)
			track := child(t, child(t, seg, 0x1654AE6B), 0xAE)
			require.Equal(t, "V_MJPEG", string(child(t, track, 0x86)))
			video := child(t, track, 0xE0)
			require.Equal(t, []uint64{5, 4}, []uint64{ebmlUint(child(t, video, 0xB0)), ebmlUint(child(t, video, 0xBA))})

			var times []int
			clusters := 0
			for _, e := range ebmlElements(t, seg) {
				if e.id != 0x1F43B675 {
					continue
				}
				clusters++
				start := int(ebmlUint(child(t, e.data, 0xE7)))
				for _, blk := range ebmlElements(t, e.data) {
					if blk.id != 0xA3 {
						continue
					}
					require.Equal(t, []byte{0x81}, blk.data[:1], "track 1")
					require.Equal(t, byte(0x80), blk.data[3], "keyframe")
					times = append(times, start+int(int16(binary.BigEndian.Uint16(blk.data[1:]))))
					img, err := jpeg.Decode(bytes.NewReader(blk.data[4:]))
					require.NoError(t, err)
					require.Equal(t, fs[0].Bounds(), img.Bounds())
				}
			}
			require.Equal(t, tt.wantClusters, clusters)
			require.Len(t, times, tt.frames)
			for k, ms := range times {
				require.Equal(t, int(math.Round(float64(k)*1000/fps)), ms, "frame %d", k)
			}
		})
	}
}
