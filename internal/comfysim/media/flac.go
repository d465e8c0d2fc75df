package media

import (
	"bytes"
	"encoding/binary"
)

// FLAC: 16-bit samples in VERBATIM subframes.

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

// EncodeFLAC writes 16-bit audio at rate samples per second as FLAC, with
// comments (key, value) in its Vorbis comment block. pcm holds one slice of
// samples per channel, all of the same length.
func EncodeFLAC(rate int, pcm [][]int16, comments [][2]string) []byte {
	channels := len(pcm)
	samples := 0
	if channels > 0 {
		samples = len(pcm[0])
	}
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
			for _, v := range pcm[ch][start : start+size] {
				fr = binary.BigEndian.AppendUint16(fr, uint16(v))
			}
		}
		fr = binary.BigEndian.AppendUint16(fr, crc16(fr))
		out.Write(fr)
	}
	return out.Bytes()
}
