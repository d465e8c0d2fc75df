package fleet_test

import (
	"encoding/json"
	"strings"
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

// A loader input that names a model by URL is not a file of ComfyUI's
// folders: WorkflowModels leaves it out, URLModels lists it, with the
// entries of input.models, by their credential-free key.
func TestModelsByURL(t *testing.T) {
	t.Parallel()
	workflow := json.RawMessage(`{
		"1":{"class_type":"CheckpointLoaderSimple","inputs":{"ckpt_name":"sdxl.safetensors"}},
		"2":{"class_type":"LoraLoader","inputs":{"lora_name":"https://HF.example/x/detail.safetensors?token=secret","model":["1",0]}},
		"3":{"class_type":"LoraLoader","inputs":{"lora_name":"https://hf.example/x/detail.safetensors","model":["2",0]}},
		"4":{"class_type":"LoadImage","inputs":{"image":"https://img.example/cat.png"}},
		"5":{"class_type":"VAELoader","inputs":{"vae_name":"https://%zz"}}}`)
	require.Equal(t, map[string][]string{"ckpt_name": {"sdxl.safetensors"}}, fleet.WorkflowModels(workflow))

	refs := []proto.ModelRef{
		{URL: "https://civitai.example/api/download/models/7?type=Model&token=t", Folder: "upscale_models", SHA256: "ABCD"},
		{URL: "https://hf.example/x/detail.safetensors", Folder: "loras", SHA256: "ee"}, // the loader's, with its digest
		{URL: "not a url", Folder: "loras"},
	}
	require.Equal(t, []fleet.URLModel{
		{Key: "https://civitai.example/api/download/models/7?type=Model", SHA256: "abcd"},
		{Key: "https://hf.example/x/detail.safetensors", SHA256: "ee"},
	}, fleet.URLModels(workflow, refs))

	need := fleet.JobNeed(json.RawMessage(`{"workflow":` + string(workflow) + `,"models":[{"url":"https://m.example/a.pt","folder":"x"}]}`))
	require.Equal(t, map[string][]string{"ckpt_name": {"sdxl.safetensors"}}, need.Files)
	require.Equal(t, []fleet.URLModel{{Key: "https://hf.example/x/detail.safetensors"}, {Key: "https://m.example/a.pt"}}, need.URLs)
	// A malformed input.models does not hide the workflow's models.
	need = fleet.JobNeed(json.RawMessage(`{"workflow":` + string(workflow) + `,"models":"x"}`))
	require.Equal(t, []fleet.URLModel{{Key: "https://hf.example/x/detail.safetensors"}}, need.URLs)
	require.True(t, fleet.JobNeed(json.RawMessage(`[1]`)).Empty())
	require.True(t, fleet.JobNeed(json.RawMessage(`{"workflow":{"1":{"class_type":"LoadImage","inputs":{"image":"a.png"}}}}`)).Empty())
}

func TestTier(t *testing.T) {
	t.Parallel()
	lora := "https://hf.example/x/detail.safetensors"
	cached := proto.CachedModel{URL: lora, SHA256: "ee", Folder: "loras", File: "detail-ee.safetensors"}
	other := proto.CachedModel{URL: "https://mirror.example/detail.safetensors", SHA256: "ee", Folder: "loras", File: "detail-ee.safetensors"}
	models := map[string][]string{"ckpt_name": {"a", "b"}}
	byURL := fleet.Need{Files: map[string][]string{"ckpt_name": {"a"}}, URLs: []fleet.URLModel{{Key: lora}}}
	byDigest := fleet.Need{URLs: []fleet.URLModel{{Key: "https://elsewhere.example/d.safetensors", SHA256: "EE"}}}
	byName := fleet.Need{Files: map[string][]string{"ckpt_name": {"a"}}}
	tests := []struct {
		name string
		need fleet.Need
		w    proto.Heartbeat
		want fleet.Tier
	}{
		{name: "nothing", need: byURL, w: proto.Heartbeat{Models: models}, want: fleet.TierCold},
		{name: "cached", need: byURL, w: proto.Heartbeat{Models: models, Cached: []proto.CachedModel{cached}}, want: fleet.TierCached},
		{name: "cached without the checkpoint", need: byURL, w: proto.Heartbeat{Models: map[string][]string{"ckpt_name": {"b"}}, Cached: []proto.CachedModel{cached}}, want: fleet.TierCold},
		{name: "cached, checkpoint warm", need: byURL, w: proto.Heartbeat{Models: models, Warm: []string{"a"}, Cached: []proto.CachedModel{cached}}, want: fleet.TierCached},
		{name: "warm by the rewritten name", need: byURL, w: proto.Heartbeat{Models: models, Warm: []string{"a", "detail-ee.safetensors"}, Cached: []proto.CachedModel{cached}}, want: fleet.TierWarm},
		{name: "warm by the URL's key", need: byURL, w: proto.Heartbeat{Models: models, Warm: []string{"a", lora}, Cached: []proto.CachedModel{cached}}, want: fleet.TierWarm},
		{name: "warm by the key, no longer cached", need: byURL, w: proto.Heartbeat{Models: models, Warm: []string{"a", lora}}, want: fleet.TierWarm},
		{name: "rewritten name warm but not cached", need: byURL, w: proto.Heartbeat{Models: models, Warm: []string{"a", "detail-ee.safetensors"}}, want: fleet.TierCold},
		{name: "lora warm, checkpoint not", need: byURL, w: proto.Heartbeat{Models: models, Warm: []string{lora}, Cached: []proto.CachedModel{cached}}, want: fleet.TierCached},
		{name: "same digest from another URL", need: byDigest, w: proto.Heartbeat{Cached: []proto.CachedModel{other}}, want: fleet.TierCached},
		{name: "same digest, warm", need: byDigest, w: proto.Heartbeat{Warm: []string{"detail-ee.safetensors"}, Cached: []proto.CachedModel{other}}, want: fleet.TierWarm},
		{name: "by name, warm", need: byName, w: proto.Heartbeat{Models: models, Warm: []string{"a"}}, want: fleet.TierWarm},
		{name: "by name, not warm: no cached tier", need: byName, w: proto.Heartbeat{Models: models, Cached: []proto.CachedModel{cached}}, want: fleet.TierCold},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, tt.need.Tier(tt.w), tt.name)
	}
	require.Equal(t, "warm", fleet.TierWarm.String())
	require.Equal(t, "cached", fleet.TierCached.String())
	require.Equal(t, "cold", fleet.TierCold.String())
}

func FuzzJobNeed(f *testing.F) {
	f.Add([]byte(`{"workflow":{"1":{"class_type":"LoraLoader","inputs":{"lora_name":"https://h/a"}}},"models":[{"url":"https://h/b","folder":"x","sha256":"AB"}]}`))
	f.Add([]byte(`{"workflow":{"1":{"class_type":"LoraLoader","inputs":{"lora_name":"http://"}}},"models":[{"url":7}]}`))
	f.Add([]byte(`{"models":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		need := fleet.JobNeed(data)
		for i, m := range need.URLs {
			if m.Key == "" || m.Key == "(invalid URL)" || m.SHA256 != strings.ToLower(m.SHA256) {
				t.Fatalf("bad entry %+v", m)
			}
			if i > 0 && need.URLs[i-1].Key >= m.Key {
				t.Fatalf("not sorted or repeated: %+v", need.URLs)
			}
		}
		for _, files := range need.Files {
			for _, f := range files {
				if proto.IsModelURL(f) {
					t.Fatalf("URL %q listed as a file", f)
				}
			}
		}
	})
}
