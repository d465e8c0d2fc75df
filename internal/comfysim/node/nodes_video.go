package node

import (
	"bytes"
	"fmt"
	"image"
	"math"
	"path/filepath"
	"time"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/media"
	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
)

// SaveWEBM, VideoHelperSuite's VHS_VideoCombine (the custom node most video
// workflows end with, whose UI key is "gifs") and the bundled
// SaveImageWebsocket (full-size PNGs over the WebSocket, nothing in
// history).

func (x *Run) frames(img *imageVal) []*image.NRGBA {
	out := make([]*image.NRGBA, len(img.frames))
	for k, f := range img.frames {
		out[k] = f.render(img.w, img.h)
	}
	return out
}

func runSaveWEBM(x *Run) ([]any, *pyvalue.Dict, error) {
	img, err := x.images("images")
	if err != nil {
		return nil, nil, err
	}
	where := "SaveWEBM.execute"
	sp, err := x.Exec.SaveImagePath("output", x.str("filename_prefix"), img.w, img.h, where)
	if err != nil {
		return nil, nil, err
	}
	file := fmt.Sprintf("%s_%05d_.webm", sp.Filename, sp.Counter)
	data, err := media.EncodeWebM(x.frames(img), x.float("fps"))
	if err != nil {
		return nil, nil, Raise("OSError", err.Error(), where)
	}
	if err := x.Exec.WriteFile(filepath.Join(sp.Folder, file), data); err != nil {
		return nil, nil, Raise("OSError", err.Error(), where)
	}
	x.Exec.Saved(sp, sp.Counter+1)
	ui := pyvalue.NewDict("images", []any{pyvalue.NewDict("filename", file, "subfolder", sp.Subfolder, "type", "output")}, "animated", []any{true})
	return []any{}, ui, nil
}

// vhsFormats are the formats VHS_VideoCombine offers that the emulator can
// write (VHS adds one per ffmpeg preset it finds; the emulator has none).
var vhsFormats = []string{"image/gif", "image/webp", "video/h264-mp4"}

func runVHSVideoCombine(x *Run) ([]any, *pyvalue.Dict, error) {
	img, err := x.images("images")
	if err != nil {
		return nil, nil, err
	}
	where := "VideoCombine.combine_video"
	typ := "output"
	if !pyvalue.Truth(x.Inputs["save_output"]) {
		typ = "temp"
	}
	sp, err := x.Exec.SaveImagePath(typ, x.str("filename_prefix"), img.w, img.h, where)
	if err != nil {
		return nil, nil, err
	}
	frames := x.frames(img)
	if pyvalue.Truth(x.Inputs["pingpong"]) && len(frames) > 2 {
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
	still, err := media.EncodePNG(frames[0], texts, 4)
	if err != nil {
		return nil, nil, Raise("OSError", err.Error(), where)
	}
	pngFile := fmt.Sprintf("%s_%05d.png", sp.Filename, sp.Counter)
	if err := x.Exec.WriteFile(filepath.Join(sp.Folder, pngFile), still); err != nil {
		return nil, nil, Raise("OSError", err.Error(), where)
	}
	var data []byte
	var ext string
	switch format {
	case "image/gif":
		ext = "gif"
		data, err = media.EncodeGIF(frames, fps, x.intSmall("loop_count"))
	case "image/webp":
		ext = "webp"
		data = media.EncodeAnimatedWebP(frames, int(math.Round(1000/fps)))
	default:
		ext = "mp4"
		data, err = media.EncodeMJPEGMP4(frames, fps)
	}
	if err != nil {
		return nil, nil, Raise("OSError", err.Error(), where)
	}
	file := fmt.Sprintf("%s_%05d.%s", sp.Filename, sp.Counter, ext)
	full := filepath.Join(sp.Folder, file)
	if err := x.Exec.WriteFile(full, data); err != nil {
		return nil, nil, Raise("OSError", err.Error(), where)
	}
	x.Exec.Saved(sp, sp.Counter+1)
	entry := pyvalue.NewDict("filename", file, "subfolder", sp.Subfolder, "type", typ, "format", format,
		"frame_rate", fps, "workflow", pngFile, "fullpath", full)
	return []any{[]any{true, []any{filepath.Join(sp.Folder, pngFile), full}}}, pyvalue.NewDict("gifs", []any{entry}), nil
}

func runSaveImageWebsocket(x *Run) ([]any, *pyvalue.Dict, error) {
	img, err := x.images("images")
	if err != nil {
		return nil, nil, err
	}
	n := len(img.frames)
	hook := x.Exec.ProgressBar(n, true)
	for k, f := range img.frames {
		fr := f
		preview := func() []byte {
			var b bytes.Buffer
			_ = media.WritePNG(&b, fr.render(img.w, img.h), 1)
			return b.Bytes()
		}
		if err := hook.Update(k, preview); err != nil {
			return nil, nil, err
		}
	}
	return []any{}, nil, nil
}

// alwaysChanged is an IS_CHANGED that returns time.time(): never cached.
func alwaysChanged(Host, *pyvalue.Dict) any { return float64(time.Now().UnixNano()) / 1e9 }
