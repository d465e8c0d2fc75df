package media

import (
	"bytes"
	"image"
	"image/color/palette"
	"image/draw"
	"image/gif"
	"math"
)

// EncodeGIF writes frames as an animated GIF with the Plan 9 palette,
// dithered, at fps frames per second (8 when fps is not a positive number),
// repeated loops times (0: forever).
func EncodeGIF(frames []*image.NRGBA, fps float64, loops int) ([]byte, error) {
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
