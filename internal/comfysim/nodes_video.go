package comfysim

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"image"
	"image/color/palette"
	"image/draw"
	"image/gif"
	"image/jpeg"
	"math"
	"path/filepath"
	"time"
)

// SaveWEBM, VideoHelperSuite's VHS_VideoCombine (the custom node most video
// workflows end with, whose UI key is "gifs") and the bundled
// SaveImageWebsocket (full-size PNGs over the WebSocket, nothing in
// history).

func (x *nodeRun) frames(img *imageVal) []*image.NRGBA {
	out := make([]*image.NRGBA, len(img.frames))
	for k, f := range img.frames {
		out[k] = f.render(img.w, img.h)
	}
	return out
}

func runSaveWEBM(x *nodeRun) ([]any, *pyDict, error) {
	img, err := x.images("images")
	if err != nil {
		return nil, nil, err
	}
	where := "SaveWEBM.execute"
	sp, err := saveImagePath(x.s.counters, x.str("filename_prefix"), x.s.outputDir, img.w, img.h, where)
	if err != nil {
		return nil, nil, err
	}
	file := fmt.Sprintf("%s_%05d_.webm", sp.filename, sp.counter)
	data, err := encodeWebM(x.frames(img), x.float("fps"))
	if err != nil {
		return nil, nil, pyException("OSError", err.Error(), where)
	}
	if err := x.s.writeOutput(filepath.Join(sp.folder, file), data); err != nil {
		return nil, nil, pyException("OSError", err.Error(), where)
	}
	x.s.counters.wrote(sp, sp.counter+1)
	ui := newDict("images", []any{newDict("filename", file, "subfolder", sp.subfolder, "type", "output")}, "animated", []any{true})
	return []any{}, ui, nil
}

// vhsFormats are the formats VHS_VideoCombine offers that the emulator can
// write (VHS adds one per ffmpeg preset it finds; the emulator has none).
var vhsFormats = []string{"image/gif", "image/webp", "video/h264-mp4"}

func runVHSVideoCombine(x *nodeRun) ([]any, *pyDict, error) {
	img, err := x.images("images")
	if err != nil {
		return nil, nil, err
	}
	where := "VideoCombine.combine_video"
	dir, typ := x.s.outputDir, "output"
	if !pyTruth(x.in["save_output"]) {
		dir, typ = x.s.tempDir, "temp"
	}
	sp, err := saveImagePath(x.s.counters, x.str("filename_prefix"), dir, img.w, img.h, where)
	if err != nil {
		return nil, nil, err
	}
	frames := x.frames(img)
	if pyTruth(x.in["pingpong"]) && len(frames) > 2 {
		for k := len(frames) - 2; k > 0; k-- {
			frames = append(frames, frames[k])
		}
	}
	fps := x.float("frame_rate")
	format := x.str("format")
	// The first frame, with the workflow, as VHS writes it beside the video.
	texts, err := x.pngTexts()
	if err != nil {
		return nil, nil, err
	}
	still, err := encodePNG(frames[0], texts, 4)
	if err != nil {
		return nil, nil, pyException("OSError", err.Error(), where)
	}
	pngFile := fmt.Sprintf("%s_%05d.png", sp.filename, sp.counter)
	if err := x.s.writeOutput(filepath.Join(sp.folder, pngFile), still); err != nil {
		return nil, nil, pyException("OSError", err.Error(), where)
	}
	var data []byte
	var ext string
	switch format {
	case "image/gif":
		ext = "gif"
		data, err = encodeGIF(frames, fps, x.intSmall("loop_count"))
	case "image/webp":
		ext = "webp"
		data = encodeAnimatedWebP(frames, int(math.Round(1000/fps)))
	default:
		ext = "mp4"
		data, err = encodeMJPEGMP4(frames, fps)
	}
	if err != nil {
		return nil, nil, pyException("OSError", err.Error(), where)
	}
	file := fmt.Sprintf("%s_%05d.%s", sp.filename, sp.counter, ext)
	full := filepath.Join(sp.folder, file)
	if err := x.s.writeOutput(full, data); err != nil {
		return nil, nil, pyException("OSError", err.Error(), where)
	}
	x.s.counters.wrote(sp, sp.counter+1)
	entry := newDict("filename", file, "subfolder", sp.subfolder, "type", typ, "format", format,
		"frame_rate", fps, "workflow", pngFile, "fullpath", full)
	return []any{[]any{true, []any{filepath.Join(sp.folder, pngFile), full}}}, newDict("gifs", []any{entry}), nil
}

func runSaveImageWebsocket(x *nodeRun) ([]any, *pyDict, error) {
	img, err := x.images("images")
	if err != nil {
		return nil, nil, err
	}
	n := len(img.frames)
	hook := &progressHook{x: x, total: n, lastSent: -1, png: true}
	for k, f := range img.frames {
		fr := f
		preview := func() []byte {
			var b bytes.Buffer
			_ = encodePNGTo(&b, fr.render(img.w, img.h), 1)
			return b.Bytes()
		}
		if err := hook.update(k, preview); err != nil {
			return nil, nil, err
		}
	}
	return []any{}, nil, nil
}

// alwaysChanged is an IS_CHANGED that returns time.time(): never cached.
func alwaysChanged(*Server, *pyDict) any { return float64(time.Now().UnixNano()) / 1e9 }

// encodeGIF writes an animated GIF with the Plan 9 palette.
func encodeGIF(frames []*image.NRGBA, fps float64, loops int) ([]byte, error) {
	if fps <= 0 || math.IsNaN(fps) || math.IsInf(fps, 0) {
		fps = 8
	}
	delay := int(math.Round(100 / fps))
	g := &gif.GIF{LoopCount: loops}
	for _, f := range frames {
		p := image.NewPaletted(f.Rect, palette.Plan9)
		draw.FloydSteinberg.Draw(p, f.Rect, f, image.Point{})
		g.Image = append(g.Image, p)
		g.Delay = append(g.Delay, delay)
	}
	var b bytes.Buffer
	if err := gif.EncodeAll(&b, g); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// --- WebM (Matroska) ---

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

// encodeWebM writes frames as a WebM (Matroska) file with one video track.
// The frames are JPEGs (codec V_MJPEG): real ComfyUI writes VP9 or AV1,
// which the emulator has no encoder for; the container, the MIME type and
// the sniffed signature are those of a WebM file.
func encodeWebM(frames []*image.NRGBA, fps float64) ([]byte, error) {
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
