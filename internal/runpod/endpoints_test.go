package runpod_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/proto"
)

func TestParseEndpoints(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		want    runpod.Endpoints
		wantErr string
	}{
		{name: "unset", in: "", want: nil},
		{name: "blank", in: "  ", want: nil},
		{name: "one", in: "sdxl=pool-sdxl", want: runpod.Endpoints{"sdxl": "pool-sdxl"}},
		{name: "two, spaces", in: " sdxl = pool-sdxl , flux=pool-flux ", want: runpod.Endpoints{"sdxl": "pool-sdxl", "flux": "pool-flux"}},
		{name: "shared pool", in: "a=p,b=p", want: runpod.Endpoints{"a": "p", "b": "p"}},
		{name: "no =", in: "sdxl=pool-sdxl,flux", wantErr: `entry 2 "flux" has no '=': want endpoint-id=pool`},
		{name: "empty entry", in: "sdxl=pool-sdxl,,flux=f", wantErr: "entry 2 is empty"},
		{name: "trailing comma", in: "sdxl=pool-sdxl,", wantErr: "entry 2 is empty"},
		{name: "empty id", in: "=pool", wantErr: `entry 1 "=pool": endpoint id is empty`},
		{name: "empty pool", in: "sdxl=", wantErr: `entry 1 "sdxl=": pool id is empty`},
		{name: "bad pool", in: "sdxl=pool.sdxl", wantErr: `entry 1 "sdxl=pool.sdxl": pool id "pool.sdxl" has the character '.' at offset 4`},
		{name: "bad id", in: "sd xl=p", wantErr: `entry 1 "sd xl=p": endpoint id "sd xl" has the character ' '`},
		{name: "two =", in: "a=b=c", wantErr: `entry 1 "a=b=c": pool id "b=c"`},
		{name: "duplicate", in: "sdxl=a,flux=b,sdxl=c", wantErr: `entry 3 "sdxl=c": endpoint sdxl is mapped twice (to a and to c)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := runpod.ParseEndpoints(tt.in)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				require.Nil(t, got)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestEndpointsResolve(t *testing.T) {
	t.Parallel()
	var unset runpod.Endpoints
	pool, scoped, ok := unset.Resolve("anything", "default")
	require.Equal(t, []any{"default", false, true}, []any{pool, scoped, ok})
	require.Equal(t, []string{"default"}, unset.Pools("default"))

	e := runpod.Endpoints{"sdxl": "pool-sdxl", "flux": "pool-flux", "sdxl2": "pool-sdxl"}
	pool, scoped, ok = e.Resolve("sdxl", "default")
	require.Equal(t, []any{"pool-sdxl", true, true}, []any{pool, scoped, ok})
	_, _, ok = e.Resolve("nope", "default")
	require.False(t, ok)
	require.Equal(t, []string{"pool-flux", "pool-sdxl"}, e.Pools("default"))
	require.Equal(t, "flux=pool-flux,sdxl=pool-sdxl,sdxl2=pool-sdxl", e.String())
	require.ErrorContains(t, runpod.Endpoints{"a": "b c"}.Validate(), "pool of endpoint a")
	require.ErrorContains(t, runpod.Config{Endpoints: runpod.Endpoints{"": "p"}}.Validate(), "endpoints: endpoint id is empty")
}

// FuzzParseEndpoints: any text either parses into a map whose ids and
// pools are valid and which prints back to text that parses to the same
// map, or is refused with an error that names an entry.
func FuzzParseEndpoints(f *testing.F) {
	for _, s := range []string{"", "sdxl=pool-sdxl,flux=pool-flux", "a=b", " a = b ", "a=b,a=c", "a", "=", ",", "a=b,", "a=b=c", "ä=b", "a=\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := runpod.ParseEndpoints(s)
		if err != nil {
			require.Nil(t, e)
			require.True(t, strings.HasPrefix(err.Error(), "entry "), "%q: %v", s, err)
			return
		}
		require.NoError(t, e.Validate())
		for id, pool := range e {
			require.NoError(t, proto.ValidID(id))
			require.NoError(t, proto.ValidID(pool))
		}
		again, err := runpod.ParseEndpoints(e.String())
		require.NoError(t, err)
		require.Equal(t, e, again)
	})
}
