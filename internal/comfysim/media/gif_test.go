package media_test

import (
	"bytes"
	"image/gif"
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/media"
)

func TestEncodeGIF(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		fps       float64
		loops     int
		wantDelay int // hundredths of a second
	}{
		{name: "8 fps", fps: 8, loops: 0, wantDelay: 13},
		{name: "25 fps twice", fps: 25, loops: 2, wantDelay: 4},
		{name: "zero fps is 8", fps: 0, wantDelay: 13},
		{name: "NaN fps is 8", fps: math.NaN(), wantDelay: 13},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b, err := media.EncodeGIF(frames(3, 10, 6), tt.fps, tt.loops)
			require.NoError(t, err)
			g, err := gif.DecodeAll(bytes.NewReader(b))
			require.NoError(t, err)
			require.Len(t, g.Image, 3)
			require.Equal(t, []int{tt.wantDelay, tt.wantDelay, tt.wantDelay}, g.Delay)
			require.Equal(t, tt.loops, g.LoopCount)
			require.Equal(t, 10, g.Config.Width)
			require.Equal(t, 6, g.Config.Height)
		})
	}
}
