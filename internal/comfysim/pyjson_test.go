package comfysim

import (
	"math"
	"math/big"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseEncodeLikePython(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, want string
	}{
		{`{"b": 1, "a": 2}`, `{"b": 1, "a": 2}`},
		{`{"a": 1, "b": 2, "a": 3}`, `{"a": 3, "b": 2}`},
		{`[18446744073709551615, -0, 1.0, 1e16, 1.5e-5, 0.0001, 123456789.5, 1E400]`, `[18446744073709551615, 0, 1.0, 1e+16, 1.5e-05, 0.0001, 123456789.5, Infinity]`},
		{`[NaN, Infinity, -Infinity]`, `[NaN, Infinity, -Infinity]`},
		{`"caf\u00e9 \ud83d\ude00 \ud800 / \/ \t"`, `"caf\u00e9 \ud83d\ude00 \ud800 / / \t"`},
		{"\"\u00e9\"", `"\u00e9"`},
		{` { } `, `{}`},
		{`[]`, `[]`},
		{`[true, false, null]`, `[true, false, null]`},
	}
	for _, tt := range tests {
		v, err := parsePyJSON([]byte(tt.in))
		require.NoError(t, err, tt.in)
		require.Equal(t, tt.want, string(encodePy(v)), tt.in)
	}
}

func TestParseRejectsWhatPythonRejects(t *testing.T) {
	t.Parallel()
	bad := []string{
		``, ` `, `{`, `[1,]`, `{"a":1,}`, `01`, `+1`, `.5`, `1.`, `"a` + "\x01" + `"`, "\xef\xbb\xbf{}", "\"\xff\"",
		`{'a': 1}`, `nan`, `[1] x`, `"\x"`, `"\u12"`, `tru`,
		"1" + string(make([]byte, 0)) + func() string {
			b := make([]byte, 4301)
			for i := range b {
				b[i] = '7'
			}
			return string(b)
		}(),
	}
	for _, in := range bad {
		_, err := parsePyJSON([]byte(in))
		require.ErrorIs(t, err, errInvalidJSON, "%q", in)
	}
}

func TestPyReprAndStr(t *testing.T) {
	t.Parallel()
	d := newDict("a", big.NewInt(1), "b", []any{"x", nil, true, 2.5})
	require.Equal(t, `{'a': 1, 'b': ['x', None, True, 2.5]}`, pyRepr(d))
	require.Equal(t, `'it'`, pyStrRepr("it"))
	require.Equal(t, `"it's"`, pyStrRepr("it's"))
	require.Equal(t, `'say "it\'s"'`, pyStrRepr(`say "it's"`))
	require.Equal(t, `'a\nb\x00é'`, pyStrRepr("a\nb\x00é"))
	require.Equal(t, "abc", pyStr("abc"))
	require.Equal(t, "None", pyStr(nil))
	require.Equal(t, "inf", pyStr(math.Inf(1)))
	require.Equal(t, "-1.0", pyStr(-1.0))
	require.Equal(t, "1e+22", pyFloatRepr(1e22))
	require.Equal(t, "1234567.0", pyFloatRepr(1234567))
	require.Equal(t, "1e-05", pyFloatRepr(0.00001))
}

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
		{newDict(), "", "int() argument must be a string, a bytes-like object or a real number, not 'dict'"},
	}
	for _, tt := range ints {
		n, err := pyIntConv(tt.in)
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
		f, err := pyFloatConv(tt.in)
		if tt.err != "" {
			require.EqualError(t, err, tt.err, "%v", tt.in)
			continue
		}
		require.NoError(t, err)
		require.Equal(t, tt.want, f)
	}
	require.False(t, pyTruth(""))
	require.True(t, pyTruth("false"), "the string \"false\" is truthy")
	require.True(t, pyEqual(big.NewInt(1), 1.0))
	require.True(t, pyEqual(true, big.NewInt(1)))
	require.False(t, pyEqual(math.NaN(), math.NaN()))
	require.True(t, pyLess(big.NewInt(-1), 0.0))
}

func TestEncodeIndent(t *testing.T) {
	t.Parallel()
	v, err := parsePyJSON([]byte(`{"a": [1, {"b": []}], "c": {}}`))
	require.NoError(t, err)
	require.Equal(t, "{\n    \"a\": [\n        1,\n        {\n            \"b\": []\n        }\n    ],\n    \"c\": {}\n}", string(encodePyIndent(v, 4)))
}

func TestSaveImagePathCounter(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sp, err := saveImagePath(nil, "ComfyUI", dir, 8, 8, "test")
	require.NoError(t, err)
	require.Equal(t, int64(1), sp.counter)
	require.Equal(t, "", sp.subfolder)
	sp, err = saveImagePath(nil, "a/b/../c/x", dir, 8, 8, "test")
	require.NoError(t, err)
	require.Equal(t, "a/c", sp.subfolder)
	require.Equal(t, "x", sp.filename)
	_, err = saveImagePath(nil, "/abs/x", dir, 8, 8, "test")
	require.Error(t, err)
	var ne *nodeError
	require.ErrorAs(t, err, &ne)
	require.Equal(t, "Exception", ne.typ)
}

func TestPySplitext(t *testing.T) {
	t.Parallel()
	for in, want := range map[string][2]string{
		"cat.png": {"cat", ".png"}, "a.tar.gz": {"a.tar", ".gz"}, ".bashrc": {".bashrc", ""}, "dir.d/file": {"dir.d/file", ""},
		"x": {"x", ""}, "..png": {"..png", ""},
	} {
		b, e := pySplitext(in)
		require.Equal(t, want, [2]string{b, e}, in)
	}
}
