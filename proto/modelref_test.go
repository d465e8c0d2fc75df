package proto_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/proto"
)

func TestDecodeInputModels(t *testing.T) {
	t.Parallel()
	const wf = `{"9":{"class_type":"SaveImage","inputs":{}}}`
	sha := strings.Repeat("a1", 32)
	in, err := proto.DecodeInput([]byte(`{"workflow":` + wf + `,"models":[{"url":"https://h.example/x.safetensors?token=t","folder":"loras","name":"x.safetensors","sha256":"` + sha + `","headers":{"X-Key":"k"}}]}`))
	require.NoError(t, err)
	require.Equal(t, []proto.ModelRef{{URL: "https://h.example/x.safetensors?token=t", Folder: "loras", Name: "x.safetensors", SHA256: sha,
		Headers: map[string]string{"X-Key": "k"}}}, in.Models)
	for _, tt := range []struct{ models, wantErr string }{
		{`{}`, `'models' must be a list of objects`},
		{`[1]`, `'models' must be a list of objects`},
		{`[null]`, `models[0] must be an object`},
		{`[{"folder":"loras"}]`, `models[0].url is missing`},
		{`[{"url":"ftp://h/x","folder":"loras"}]`, `models[0].url must be an https:// URL`},
		{`[{"url":"https://h/x"}]`, `models[0].folder is missing`},
		{`[{"url":"https://h/x","folder":"../etc"}]`, `models[0].folder "../etc" is not a model folder's name`},
		{`[{"url":"https://h/x","folder":"loras","sha256":"abc"}]`, `models[0].sha256 must be 64 hex digits`},
		{`[{"url":"https://h/x","folder":"loras","name":"a/b"}]`, `models[0].name: "a/b" contains a path separator`},
		{`[{"url":"https://h/x","folder":"loras","name":".hidden"}]`, `models[0].name ".hidden" would be a hidden file`},
		{`[{"url":"https://h/x","folder":"loras","size":1}]`, `models[0]: unknown field "size"`},
		{`[{"url":"https://h/x","folder":"loras","headers":{"Range":"bytes=0-"}}]`, `models[0].headers: Range is set by the worker`},
		{`[{"url":"https://h/x","folder":"loras","headers":{"X":"a\nb"}}]`, `the value of X is longer than 8192 bytes or holds a line break`},
		{`[{"url":"https://h/x","folder":"loras","headers":["k"]}]`, `models[0].headers must be an object of strings`},
		{`[{"url":1,"folder":"loras"}]`, `models[0].url must be a string, got a number`},
	} {
		_, err := proto.DecodeInput([]byte(`{"workflow":` + wf + `,"models":` + tt.models + `}`))
		require.ErrorContains(t, err, tt.wantErr, tt.models)
		require.NotContains(t, err.Error(), "a\nb", "a header's value is never repeated")
	}
}
