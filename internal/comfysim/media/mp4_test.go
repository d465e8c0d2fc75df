package media_test

import (
	"bytes"
	"encoding/binary"
	"image/jpeg"
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/media"
)

// mp4Box is one ISO BMFF box: its type, payload and offset in the file.
type mp4Box struct {
	typ    string
	data   []byte
	offset int // of the payload
}

// mp4Boxes indexes every box by its path ("moov/trak/mdia/mdhd"),
// descending into the container boxes EncodeMJPEGMP4 writes.
func mp4Boxes(t *testing.T, b []byte, base int, prefix string, out map[string]mp4Box) {
	t.Helper()
	for pos := 0; pos < len(b); {
		n := int(binary.BigEndian.Uint32(b[pos:]))
		require.GreaterOrEqual(t, n, 8)
		typ := string(b[pos+4 : pos+8])
		bx := mp4Box{typ: typ, data: b[pos+8 : pos+n], offset: base + pos + 8}
		path := prefix + typ
		out[path] = bx
		switch typ {
		case "moov", "trak", "mdia", "minf", "stbl", "dinf":
			mp4Boxes(t, bx.data, bx.offset, path+"/", out)
		}
		pos += n
	}
}

func TestEncodeMJPEGMP4(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		fps           float64
		wantTimescale uint32
		wantMovieDur  uint32 // ms
	}{
		{name: "12 fps", fps: 12, wantTimescale: 12000, wantMovieDur: 333},
		{name: "fractional fps", fps: 23.976, wantTimescale: 23976, wantMovieDur: 167},
		{name: "zero fps is 24", fps: 0, wantTimescale: 24000, wantMovieDur: 167},
		{name: "infinite fps is 24", fps: math.Inf(1), wantTimescale: 24000, wantMovieDur: 167},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fs := frames(4, 6, 5)
			b, err := media.EncodeMJPEGMP4(fs, tt.fps)
			require.NoError(t, err)
			boxes := map[string]mp4Box{}
			mp4Boxes(t, b, 0, "", boxes)
			require.Equal(t, "isom", string(boxes["ftyp"].data[:4]))
			u32 := func(path string, o int) uint32 { return binary.BigEndian.Uint32(boxes[path].data[o:]) }

			require.Equal(t, uint32(1000), u32("moov/mvhd", 12), "movie timescale")
			require.Equal(t, tt.wantMovieDur, u32("moov/mvhd", 16), "movie duration")
			require.Equal(t, tt.wantTimescale, u32("moov/trak/mdia/mdhd", 12), "media timescale")
			require.Equal(t, uint32(4000), u32("moov/trak/mdia/mdhd", 16), "media duration")
			require.Equal(t, "vide", string(boxes["moov/trak/mdia/hdlr"].data[8:12]))

			stsd := boxes["moov/trak/mdia/minf/stbl/stsd"].data
			require.Equal(t, "jpeg", string(stsd[12:16]))
			entry := stsd[16:]
			require.Equal(t, []uint16{6, 5}, []uint16{binary.BigEndian.Uint16(entry[24:]), binary.BigEndian.Uint16(entry[26:])})
			require.Equal(t, []uint32{1, 4, 1000}, []uint32{u32("moov/trak/mdia/minf/stbl/stts", 4),
				u32("moov/trak/mdia/minf/stbl/stts", 8), u32("moov/trak/mdia/minf/stbl/stts", 12)}, "4 samples of 1000")

			// The chunk offset points at mdat's payload, where the samples
			// follow each other with the sizes stsz lists.
			mdat := boxes["mdat"]
			require.Equal(t, uint32(mdat.offset), u32("moov/trak/mdia/minf/stbl/stco", 8))
			require.Equal(t, uint32(4), u32("moov/trak/mdia/minf/stbl/stsz", 8))
			pos := 0
			for k := range fs {
				size := int(u32("moov/trak/mdia/minf/stbl/stsz", 12+4*k))
				img, err := jpeg.Decode(bytes.NewReader(mdat.data[pos : pos+size]))
				require.NoError(t, err, "sample %d", k)
				require.Equal(t, fs[k].Bounds(), img.Bounds())
				pos += size
			}
			require.Equal(t, len(mdat.data), pos)
		})
	}
}
