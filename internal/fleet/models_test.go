package fleet_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/fleet"
	"github.com/comfyfleet/comfyfleet/proto"
)

func TestWorkflowModels(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, workflow string
		want           map[string][]string
	}{
		{name: "loaders", workflow: `{
			"1":{"class_type":"CheckpointLoaderSimple","inputs":{"ckpt_name":"sdxl.safetensors"}},
			"2":{"class_type":"LoraLoader","inputs":{"lora_name":"b.safetensors","model":["1",0]}},
			"3":{"class_type":"LoraLoader","inputs":{"lora_name":"a.safetensors","model":["2",0]}},
			"4":{"class_type":"DualCLIPLoader","inputs":{"clip_name1":"t5.safetensors","clip_name2":"l.safetensors","type":"flux"}},
			"5":{"class_type":"LoraLoader","inputs":{"lora_name":"a.safetensors"}},
			"6":{"class_type":"SaveImage","inputs":{"filename_prefix":"x"}},
			"7":{"class_type":"KSampler","inputs":{"sampler_name":"euler"}}}`,
			want: map[string][]string{"ckpt_name": {"sdxl.safetensors"}, "lora_name": {"a.safetensors", "b.safetensors"},
				"clip_name1": {"t5.safetensors"}, "clip_name2": {"l.safetensors"}}},
		{name: "linked name", workflow: `{"1":{"class_type":"CheckpointLoaderSimple","inputs":{"ckpt_name":["9",0]}}}`},
		{name: "not a workflow", workflow: `[1,2]`},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, fleet.WorkflowModels(json.RawMessage(tt.workflow)), tt.name)
	}
}

func TestHasAndHasWarm(t *testing.T) {
	t.Parallel()
	w := proto.Heartbeat{Models: map[string][]string{"ckpt_name": {"a", "b"}}, Warm: []string{"a"}}
	require.True(t, fleet.Has(w, map[string][]string{"ckpt_name": {"b"}}))
	require.False(t, fleet.Has(w, map[string][]string{"ckpt_name": {"c"}}))
	require.False(t, fleet.Has(w, map[string][]string{"lora_name": {"a"}}))
	require.True(t, fleet.HasWarm(w, map[string][]string{"ckpt_name": {"a"}}))
	require.False(t, fleet.HasWarm(w, map[string][]string{"ckpt_name": {"a", "b"}}))
}

func FuzzWorkflowModels(f *testing.F) {
	f.Add([]byte(`{"1":{"class_type":"CheckpointLoaderSimple","inputs":{"ckpt_name":"a"}}}`))
	f.Add([]byte(`{"1":{"class_type":"X","inputs":null}}`))
	f.Add([]byte(`{"1":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		for input, files := range fleet.WorkflowModels(data) {
			if len(files) == 0 || input == "" {
				t.Fatalf("empty entry %q: %v", input, files)
			}
		}
	})
}
