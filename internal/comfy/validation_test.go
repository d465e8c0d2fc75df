package comfy

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

// badCheckpointBody is protocol §3.4's example: a bad checkpoint name plus a
// missing required input.
const badCheckpointBody = `{
  "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
  "node_errors": {
    "4": {"errors": [{"type": "value_not_in_list", "message": "Value not in list",
                      "details": "ckpt_name: 'missing.safetensors' not in ['v1-5-pruned-emaonly.safetensors']",
                      "extra_info": {"input_name": "ckpt_name",
                                     "input_config": [["v1-5-pruned-emaonly.safetensors"], {"tooltip": "The name of the checkpoint (model) to load."}],
                                     "received_value": "missing.safetensors"}}],
          "dependent_outputs": ["9"], "class_type": "CheckpointLoaderSimple"},
    "3": {"errors": [{"type": "required_input_missing", "message": "Required input is missing", "details": "model",
                      "extra_info": {"input_name": "model"}}],
          "dependent_outputs": ["9"], "class_type": "KSampler"}
  }
}`

func TestValidationErrorMessage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		body      string
		available map[string][]string
		want      string
	}{
		{
			name: "bad checkpoint and missing input",
			body: badCheckpointBody,
			want: "Workflow validation failed:\n" +
				"• Node 4 (errors): CheckpointLoaderSimple input ckpt_name: Value not in list: 'missing.safetensors' not in ['v1-5-pruned-emaonly.safetensors']\n" +
				"• Node 3 (errors): KSampler input model: Required input is missing\n\n" +
				"Available checkpoint models: v1-5-pruned-emaonly.safetensors",
		},
		{
			name: "no checkpoints installed",
			body: `{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
			        "node_errors": {"4": {"errors": [{"type": "value_not_in_list", "message": "Value not in list", "details": "ckpt_name: 'a.safetensors' not in []",
			        "extra_info": {"input_name": "ckpt_name", "input_config": [[], {}], "received_value": "a.safetensors"}}], "dependent_outputs": ["9"], "class_type": "CheckpointLoaderSimple"}}}`,
			want: "Workflow validation failed:\n" +
				"• Node 4 (errors): CheckpointLoaderSimple input ckpt_name: Value not in list: 'a.safetensors' not in []\n\n" +
				"No checkpoint models appear to be available. Please check your model installation.",
		},
		{
			name: "long option list comes from Available",
			body: `{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
			        "node_errors": {"10": {"errors": [{"type": "value_not_in_list", "message": "Value not in list", "details": "lora_name: 'x.safetensors' not in (list of length 25)",
			        "extra_info": {"input_name": "lora_name", "input_config": null, "received_value": "x.safetensors"}}], "dependent_outputs": ["9"], "class_type": "LoraLoader"}}}`,
			available: map[string][]string{"LoraLoader.lora_name": {"a.safetensors", "b.safetensors"}},
			want: "Workflow validation failed:\n" +
				"• Node 10 (errors): LoraLoader input lora_name: Value not in list: 'x.safetensors' not in (list of length 25)\n\n" +
				"Available options for input lora_name of LoraLoader: a.safetensors, b.safetensors",
		},
		{
			name: "missing node type has no node errors",
			body: `{"error": {"type": "missing_node_type", "message": "Node 'Foo' not found. The custom node may not be installed.", "details": "Node ID '#5'", "extra_info": {"node_id": "5", "class_type": "Foo", "node_title": "Foo"}}, "node_errors": {}}`,
			want: "Node 'Foo' not found. The custom node may not be installed.. Raw response: " +
				`{"error": {"type": "missing_node_type", "message": "Node 'Foo' not found. The custom node may not be installed.", "details": "Node ID '#5'", "extra_info": {"node_id": "5", "class_type": "Foo", "node_title": "Foo"}}, "node_errors": {}}`,
		},
		{
			name: "old string error and list node_errors",
			body: `{"error": "no prompt", "node_errors": []}`,
			want: `no prompt. Raw response: {"error": "no prompt", "node_errors": []}`,
		},
		{
			name: "node error that is not an object",
			body: `{"error": {"type": "x", "message": "Bad", "details": "", "extra_info": {}}, "node_errors": {"7": "weird"}}`,
			want: "Bad:\n• Node 7: weird",
		},
		{
			name: "not JSON",
			body: `500 Internal Server Error`,
			want: "ComfyUI validation failed (could not parse error response): 500 Internal Server Error",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ve := ParseValidationError([]byte(tt.body))
			ve.Available = tt.available
			require.Equal(t, tt.want, ve.Message())
			require.Equal(t, tt.want, ve.Error())
		})
	}
}

func TestValidationErrorFields(t *testing.T) {
	t.Parallel()
	ve := ParseValidationError([]byte(badCheckpointBody))
	require.False(t, ve.Unparsed)
	require.Equal(t, "prompt_outputs_failed_validation", ve.ErrorType)
	require.Equal(t, "Prompt outputs failed validation", ve.ErrorMessage)
	require.Len(t, ve.NodeErrors, 2)
	require.Equal(t, "4", ve.NodeErrors[0].NodeID, "server order is kept")
	require.Equal(t, []string{"9"}, ve.NodeErrors[0].DependentOutputs)
	require.Equal(t, []InvalidChoice{{
		NodeID: "4", ClassType: "CheckpointLoaderSimple", Input: "ckpt_name", Received: "missing.safetensors",
		Options: []string{"v1-5-pruned-emaonly.safetensors"}, Known: true,
	}}, ve.InvalidChoices())
}

func TestComboOptions(t *testing.T) {
	t.Parallel()
	opts, ok := comboOptions([]byte(`[["a", "b"], {"tooltip": "x"}]`))
	require.True(t, ok)
	require.Equal(t, []string{"a", "b"}, opts)
	opts, ok = comboOptions([]byte(`["COMBO", {"options": ["x"]}]`))
	require.True(t, ok)
	require.Equal(t, []string{"x"}, opts)
	_, ok = comboOptions([]byte(`["INT", {"default": 1}]`))
	require.False(t, ok)
}

func FuzzParseValidationError(f *testing.F) {
	f.Add([]byte(badCheckpointBody))
	f.Add([]byte(`{"error": "no prompt", "node_errors": []}`))
	f.Add([]byte(`{"error": {"message": 5}, "node_errors": {"1": {"errors": "x", "dependent_outputs": 3}}}`))
	f.Add([]byte(`{"error": null, "node_errors": {"1": {"errors": [{"extra_info": {"input_config": ["COMBO", {"options": NaN}]}}]}}}`))
	f.Add([]byte(`{"error": {}, "node_errors": [{"errors": [1, null, {"type": "value_not_in_list"}]}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ve := ParseValidationError(b)
		msg := ve.Message()
		if msg == "" {
			t.Fatalf("empty message for %q", b)
		}
		_ = ve.InvalidChoices()
	})
}

func ExampleValidationError_Message() {
	ve := ParseValidationError([]byte(badCheckpointBody))
	fmt.Println(ve.Message())
	// Output:
	// Workflow validation failed:
	// • Node 4 (errors): CheckpointLoaderSimple input ckpt_name: Value not in list: 'missing.safetensors' not in ['v1-5-pruned-emaonly.safetensors']
	// • Node 3 (errors): KSampler input model: Required input is missing
	//
	// Available checkpoint models: v1-5-pruned-emaonly.safetensors
}
