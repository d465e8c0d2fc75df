package node_test

import (
	"errors"
	"math/big"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim/node"
	"github.com/comfyfleet/comfyfleet/internal/comfysim/pyvalue"
)

// fakeHost is a process with fixed model lists and input files.
type fakeHost struct {
	models map[string][]string
	inputs []string
}

var _ node.Host = fakeHost{}

func (h fakeHost) ModelFiles(folder string) []string { return h.models[folder] }
func (h fakeHost) InputImages() []string             { return h.inputs }
func (h fakeHost) AnnotatedPath(name string) (string, error) {
	return "", errors.New("invalid file path")
}
func (h fakeHost) AnnotatedExists(name string) bool { return false }

func newHost() fakeHost {
	return fakeHost{models: map[string][]string{"checkpoints": {"a.safetensors"}, "vae": {"ae.safetensors"}}, inputs: []string{"cat.png"}}
}

func TestRegistryObjectInfo(t *testing.T) {
	t.Parallel()
	r := node.NewRegistry()
	info := r.ObjectInfo(newHost())
	require.Equal(t, "CheckpointLoaderSimple", info.Keys()[0], "registration order")
	for _, name := range info.Keys() {
		c := r.Class(name)
		require.NotNil(t, c, name)
		require.Equal(t, name, c.Name)
		require.NotNil(t, c.Func, name)
		entry, _ := info.Get(name)
		require.Equal(t, pyvalue.Encode(c.ObjectInfo(newHost())), pyvalue.Encode(entry), name)
	}
	require.Nil(t, r.Class("Nope"))

	// Combos list what the host has.
	tests := []struct {
		class, input string
		want         string
	}{
		{class: "CheckpointLoaderSimple", input: "ckpt_name", want: `[["a.safetensors"], {"tooltip": "The name of the checkpoint (model) to load."}]`},
		{class: "VAELoader", input: "vae_name", want: `[["ae.safetensors", "pixel_space"]]`},
		{class: "LoadImage", input: "image", want: `[["cat.png"], {"image_upload": true}]`},
		{class: "SaveVideo", input: "format", want: `["COMBO", {"tooltip": "The format to save the video as.", "default": "auto", "multiselect": false, "options": ["auto", "mp4"]}]`},
	}
	for _, tt := range tests {
		ci, _ := info.Get(tt.class)
		in, _ := ci.(*pyvalue.Dict).Get("input")
		req, _ := in.(*pyvalue.Dict).Get("required")
		entry, ok := req.(*pyvalue.Dict).Get(tt.input)
		require.True(t, ok, tt.class)
		require.Equal(t, tt.want, string(pyvalue.Encode(entry)), tt.class)
	}
}

func TestInputSpec(t *testing.T) {
	t.Parallel()
	ks := node.NewRegistry().Class("KSampler")
	in, ok := ks.Input("sampler_name")
	require.True(t, ok)
	typ, _ := in.Spec(newHost())
	opts, isCombo := in.ComboOptions(newHost())
	require.True(t, isCombo)
	require.Equal(t, typ, opts, "a v1 combo's type is its options")
	require.Contains(t, opts, "euler")

	seed, _ := ks.Input("seed")
	typ, extra := seed.Spec(newHost())
	require.Equal(t, "INT", typ)
	mx, _ := extra.Get("max")
	require.Equal(t, "18446744073709551615", pyvalue.Str(mx))
	_, isCombo = seed.ComboOptions(newHost())
	require.False(t, isCombo)
	_, ok = ks.Input("nope")
	require.False(t, ok)
}

func bigInt(n int64) *big.Int { return big.NewInt(n) }
