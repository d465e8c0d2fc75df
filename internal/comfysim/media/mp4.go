package media

import (
	"bytes"
	"encoding/binary"
	"image"
	"image/jpeg"
	"math"
)

// MP4 with one Motion-JPEG video track.

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

// EncodeMJPEGMP4 writes frames as an MP4 with one Motion-JPEG video track
// at fps frames per second (24 when fps is not a positive number). The
// frames share the first one's size.
func EncodeMJPEGMP4(frames []*image.NRGBA, fps float64) ([]byte, error) {
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
