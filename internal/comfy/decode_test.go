package comfy

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestReplaceNonFinite(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in, want string
		changed        bool
	}{
		{name: "plain", in: `{"a": 1.5}`, want: `{"a": 1.5}`},
		{name: "nan", in: `{"a": NaN}`, want: `{"a": null}`, changed: true},
		{name: "infinities", in: `[Infinity, -Infinity, 1]`, want: `[null, null, 1]`, changed: true},
		{name: "inside strings untouched", in: `{"NaN": "NaN -Infinity \"Infinity\""}`, want: `{"NaN": "NaN -Infinity \"Infinity\""}`},
		{name: "escaped backslash before quote", in: `["a\\", NaN]`, want: `["a\\", null]`, changed: true},
		{name: "negative number kept", in: `[-1, -Infinity]`, want: `[-1, null]`, changed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, changed := replaceNonFinite([]byte(tt.in))
			require.Equal(t, tt.want, string(got))
			require.Equal(t, tt.changed, changed)
		})
	}
}

func TestUnmarshalLenient(t *testing.T) {
	t.Parallel()
	var v map[string]json.RawMessage
	require.NoError(t, unmarshalLenient([]byte(`{"max": Infinity, "seed": 18446744073709551615}`), &v))
	require.Equal(t, "null", string(v["max"]))
	require.Equal(t, "18446744073709551615", string(v["seed"]))

	require.Error(t, unmarshalLenient([]byte(`{"a": nope}`), &v))
}

func TestObjectMembersKeepsOrder(t *testing.T) {
	t.Parallel()
	members, ok := objectMembers([]byte(`{"9": 1, "10": [2], "3": {"x": null}}`))
	require.True(t, ok)
	keys := make([]string, 0, len(members))
	for _, m := range members {
		keys = append(keys, m.Key)
	}
	require.Equal(t, []string{"9", "10", "3"}, keys)
	require.Equal(t, `{"x": null}`, string(members[2].Value))

	_, ok = objectMembers([]byte(`[1]`))
	require.False(t, ok)
}

func TestRawHelpers(t *testing.T) {
	t.Parallel()
	require.Equal(t, "abc", rawString([]byte(`"abc"`)))
	require.Equal(t, "12", rawString([]byte(` 12 `)))
	require.Equal(t, "", rawString([]byte(`null`)))
	require.Equal(t, []string{"a", "3"}, rawStrings([]byte(`["a", 3]`)))
	require.Equal(t, []string{"x"}, rawStrings([]byte(`"x"`)))
	require.InDelta(t, 0.5, rawFloat([]byte(`0.5`)), 0)
	require.Equal(t, int64(5), rawInt([]byte(`5.0`)))
	require.Equal(t, int64(0), rawInt([]byte(`"x"`)))
	require.Equal(t, json.Number("5.0"), rawNumber([]byte(`5.0`)))
	require.Equal(t, json.Number(""), rawNumber([]byte(`"5"`)))
}
