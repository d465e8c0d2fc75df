package media_test

import (
	"encoding/binary"
	"math/bits"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/media"
)

// flacFile is what decodeFLAC reads back.
type flacFile struct {
	rate, channels, bitsPerSample int
	total                         uint64
	vendor                        string
	comments                      []string
	pcm                           [][]int16
	frames                        int
	rateCode                      byte // of the frames' headers
}

// decodeFLAC reads the subset of FLAC EncodeFLAC writes (STREAMINFO, a
// Vorbis comment block, fixed-size frames of VERBATIM subframes), checking
// every sync code, frame number and CRC on the way.
func decodeFLAC(t *testing.T, b []byte) flacFile {
	t.Helper()
	require.Equal(t, "fLaC", string(b[:4]))
	b = b[4:]
	var f flacFile
	for last := false; !last; {
		last = b[0]&0x80 != 0
		typ, n := b[0]&0x7f, int(b[1])<<16|int(b[2])<<8|int(b[3])
		block := b[4 : 4+n]
		b = b[4+n:]
		switch typ {
		case 0: // STREAMINFO
			require.Len(t, block, 34)
			require.Equal(t, uint16(4096), binary.BigEndian.Uint16(block[0:]))
			require.Equal(t, uint16(4096), binary.BigEndian.Uint16(block[2:]))
			packed := binary.BigEndian.Uint64(block[10:])
			f.rate = int(packed >> 44)
			f.channels = int(packed>>41&7) + 1
			f.bitsPerSample = int(packed>>36&31) + 1
			f.total = packed & (1<<36 - 1)
		case 4: // VORBIS_COMMENT, little-endian lengths
			n := binary.LittleEndian.Uint32(block)
			f.vendor = string(block[4 : 4+n])
			block = block[4+n:]
			count := binary.LittleEndian.Uint32(block)
			block = block[4:]
			for range count {
				n := binary.LittleEndian.Uint32(block)
				f.comments = append(f.comments, string(block[4:4+n]))
				block = block[4+n:]
			}
		default:
			t.Fatalf("unexpected metadata block %d", typ)
		}
	}
	f.pcm = make([][]int16, f.channels)
	for len(b) > 0 {
		frame := b
		require.Equal(t, []byte{0xff, 0xf8}, b[:2], "frame %d sync", f.frames)
		size := 4096
		sizeCode := b[2] >> 4
		f.rateCode = b[2] & 0xf
		require.Equal(t, byte(f.channels-1), b[3]>>4, "independent channels")
		require.Equal(t, byte(0x4), b[3]>>1&7, "16 bits per sample")
		// The frame number in FLAC's UTF-8-like coding.
		p := 4
		ones := bits.LeadingZeros8(^b[p])
		num := uint64(b[p])
		if ones > 0 {
			num = uint64(b[p] & (0xff >> (ones + 1)))
			for k := 1; k < ones; k++ {
				num = num<<6 | uint64(b[p+k]&0x3f)
			}
			p += ones
		} else {
			p++
		}
		require.Equal(t, uint64(f.frames), num)
		switch sizeCode {
		case 0xc:
		case 0x7:
			size = int(binary.BigEndian.Uint16(b[p:])) + 1
			p += 2
		default:
			t.Fatalf("block size code %x", sizeCode)
		}
		require.Equal(t, crc8(b[:p]), b[p], "header CRC-8")
		p++
		for ch := range f.pcm {
			require.Equal(t, byte(0x02), b[p], "VERBATIM subframe")
			p++
			for k := 0; k < size; k++ {
				f.pcm[ch] = append(f.pcm[ch], int16(binary.BigEndian.Uint16(b[p:])))
				p += 2
			}
		}
		require.Equal(t, crc16(frame[:p]), binary.BigEndian.Uint16(frame[p:]), "frame CRC-16")
		b = b[p+2:]
		f.frames++
	}
	return f
}

// crc8 and crc16 are FLAC's checksums, computed bit by bit (polynomials
// 0x07 and 0x8005, MSB first), independent of the encoder's tables.
func crc8(b []byte) byte    { return byte(crcMSB(b, 8, 0x07)) }
func crc16(b []byte) uint16 { return uint16(crcMSB(b, 16, 0x8005)) }

func crcMSB(b []byte, width uint, poly uint32) uint32 {
	top, mask := uint32(1)<<(width-1), uint32(1)<<width-1
	var c uint32
	for _, x := range b {
		c ^= uint32(x) << (width - 8)
		for range 8 {
			if c&top != 0 {
				c = (c<<1 ^ poly) & mask
			} else {
				c = c << 1 & mask
			}
		}
	}
	return c
}

func ramp(n int, step int16) []int16 {
	out := make([]int16, n)
	for k := range out {
		out[k] = int16(k) * step
	}
	return out
}

func TestEncodeFLACRoundTrips(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		rate         int
		pcm          [][]int16
		wantFrames   int
		wantRateCode byte
	}{
		{name: "stereo, partial last block", rate: 44100, pcm: [][]int16{ramp(10000, 3), ramp(10000, -7)}, wantFrames: 3, wantRateCode: 0x9},
		{name: "mono, exact blocks", rate: 48000, pcm: [][]int16{ramp(8192, 11)}, wantFrames: 2, wantRateCode: 0xa},
		{name: "other rate: from STREAMINFO", rate: 22050, pcm: [][]int16{ramp(100, 5)}, wantFrames: 1, wantRateCode: 0},
		// Frame numbers from 128 on take two bytes.
		{name: "many frames", rate: 44100, pcm: [][]int16{ramp(130*4096+5, 1)}, wantFrames: 131, wantRateCode: 0x9},
		{name: "empty", rate: 44100, pcm: [][]int16{{}, {}}, wantFrames: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			comments := [][2]string{{"prompt", `{"1": 2}`}, {"workflow", "w"}}
			f := decodeFLAC(t, media.EncodeFLAC(tt.rate, tt.pcm, comments))
			require.Equal(t, tt.rate, f.rate)
			require.Equal(t, len(tt.pcm), f.channels)
			require.Equal(t, 16, f.bitsPerSample)
			require.Equal(t, uint64(len(tt.pcm[0])), f.total)
			require.Equal(t, "comfysim", f.vendor)
			require.Equal(t, []string{`prompt={"1": 2}`, "workflow=w"}, f.comments)
			require.Equal(t, tt.wantFrames, f.frames)
			require.Equal(t, tt.wantRateCode, f.rateCode)
			for ch := range tt.pcm {
				require.Equal(t, len(tt.pcm[ch]), len(f.pcm[ch]))
				if len(tt.pcm[ch]) > 0 {
					require.Equal(t, tt.pcm[ch], f.pcm[ch])
				}
			}
		})
	}
}
