package pyvalue_test

import (
	"math"
	"math/big"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
)

func TestPyReprAndStr(t *testing.T) {
	t.Parallel()
	d := pyvalue.NewDict("a", big.NewInt(1), "b", []any{"x", nil, true, 2.5})
	require.Equal(t, `{'a': 1, 'b': ['x', None, True, 2.5]}`, pyvalue.Repr(d))
	require.Equal(t, `'it'`, pyvalue.StrRepr("it"))
	require.Equal(t, `"it's"`, pyvalue.StrRepr("it's"))
	require.Equal(t, `'say "it\'s"'`, pyvalue.StrRepr(`say "it's"`))
	require.Equal(t, `'a\nb\x00é'`, pyvalue.StrRepr("a\nb\x00é"))
	require.Equal(t, "abc", pyvalue.Str("abc"))
	require.Equal(t, "None", pyvalue.Str(nil))
	require.Equal(t, "inf", pyvalue.Str(math.Inf(1)))
	require.Equal(t, "-1.0", pyvalue.Str(-1.0))
	require.Equal(t, "1e+22", pyvalue.FloatRepr(1e22))
	require.Equal(t, "1234567.0", pyvalue.FloatRepr(1234567))
	require.Equal(t, "1e-05", pyvalue.FloatRepr(0.00001))
}
