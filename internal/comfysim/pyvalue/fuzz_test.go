package pyvalue_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
)

// FuzzParsePyJSON checks that decoding never panics and that encoding is a
// fixed point: decode(encode(v)) encodes to the same bytes. Besides the
// seeds below, the corpus holds a whole POST /prompt body (seed-workflow,
// the txt2img workflow of comfysim's FuzzPostPrompt).
func FuzzParsePyJSON(f *testing.F) {
	f.Add([]byte(`[NaN, -Infinity, 1e400, 18446744073709551616, "\ud800\udc00\udc00", {"a": {"a": []}}]`))
	f.Add([]byte(`{"k": "v", "k": 1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := pyvalue.Decode(data)
		if err != nil {
			return
		}
		enc := pyvalue.Encode(v)
		v2, err := pyvalue.Decode(enc)
		require.NoError(t, err, "re-decode %q", enc)
		require.Equal(t, string(enc), string(pyvalue.Encode(v2)))
		_ = pyvalue.Repr(v)
		_ = pyvalue.EncodeIndent(v, 4)
	})
}
