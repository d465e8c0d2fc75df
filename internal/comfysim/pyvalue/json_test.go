package pyvalue_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
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
		v, err := pyvalue.Decode([]byte(tt.in))
		require.NoError(t, err, tt.in)
		require.Equal(t, tt.want, string(pyvalue.Encode(v)), tt.in)
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
		_, err := pyvalue.Decode([]byte(in))
		require.ErrorIs(t, err, pyvalue.ErrInvalidJSON, "%q", in)
	}
}

func TestEncodeIndent(t *testing.T) {
	t.Parallel()
	v, err := pyvalue.Decode([]byte(`{"a": [1, {"b": []}], "c": {}}`))
	require.NoError(t, err)
	require.Equal(t, "{\n    \"a\": [\n        1,\n        {\n            \"b\": []\n        }\n    ],\n    \"c\": {}\n}", string(pyvalue.EncodeIndent(v, 4)))
}
