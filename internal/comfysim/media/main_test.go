package media_test

import (
	"image"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// frames returns n opaque w x h pictures that differ from each other.
func frames(n, w, h int) []*image.NRGBA {
	out := make([]*image.NRGBA, n)
	for k := range out {
		img := image.NewNRGBA(image.Rect(0, 0, w, h))
		for p := 0; p < len(img.Pix); p += 4 {
			px := p / 4
			img.Pix[p] = byte(px*3 + k*40)
			img.Pix[p+1] = byte(px/w*9 + k)
			img.Pix[p+2] = byte(255 - px - k*17)
			img.Pix[p+3] = 0xff
		}
		out[k] = img
	}
	return out
}
