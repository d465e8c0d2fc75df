package pyvalue_test

import (
	"math"
	"math/big"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
)

func TestPythonConversions(t *testing.T) {
	t.Parallel()
	ints := []struct {
		in   any
		want string
		err  string
	}{
		{" 12 ", "12", ""},
		{"-1_000", "-1000", ""},
		{"\u0661\u0662", "12", ""},
		{"1__0", "", "invalid literal for int() with base 10: '1__0'"},
		{"1.5", "", "invalid literal for int() with base 10: '1.5'"},
		{20.7, "20", ""},
		{-20.7, "-20", ""},
		{true, "1", ""},
		{math.NaN(), "", "cannot convert float NaN to integer"},
		{math.Inf(-1), "", "cannot convert float infinity to integer"},
		{nil, "", "int() argument must be a string, a bytes-like object or a real number, not 'NoneType'"},
		{pyvalue.NewDict(), "", "int() argument must be a string, a bytes-like object or a real number, not 'dict'"},
	}
	for _, tt := range ints {
		n, err := pyvalue.Int(tt.in)
		if tt.err != "" {
			require.EqualError(t, err, tt.err, "%v", tt.in)
			continue
		}
		require.NoError(t, err)
		require.Equal(t, tt.want, n.String())
	}
	floats := []struct {
		in   any
		want float64
		err  string
	}{
		{"1e5", 1e5, ""},
		{" -inf ", math.Inf(-1), ""},
		{"1_0.5", 10.5, ""},
		{".5", 0.5, ""},
		{"5.", 5, ""},
		{big.NewInt(3), 3, ""},
		{"abc", 0, "could not convert string to float: 'abc'"},
		{"0x10", 0, "could not convert string to float: '0x10'"},
		{nil, 0, "float() argument must be a string or a real number, not 'NoneType'"},
	}
	for _, tt := range floats {
		f, err := pyvalue.Float(tt.in)
		if tt.err != "" {
			require.EqualError(t, err, tt.err, "%v", tt.in)
			continue
		}
		require.NoError(t, err)
		require.Equal(t, tt.want, f)
	}
	require.False(t, pyvalue.Truth(""))
	require.True(t, pyvalue.Truth("false"), "the string \"false\" is truthy")
	require.True(t, pyvalue.Equal(big.NewInt(1), 1.0))
	require.True(t, pyvalue.Equal(true, big.NewInt(1)))
	require.False(t, pyvalue.Equal(math.NaN(), math.NaN()))
	require.True(t, pyvalue.Less(big.NewInt(-1), 0.0))
}
