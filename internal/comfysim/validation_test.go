package comfysim_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/comfysim"
)

func TestValidationErrors(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	ckptCfg := []any{[]any{"v1-5-pruned-emaonly.safetensors"}, map[string]any{"tooltip": "The name of the checkpoint (model) to load."}}

	tests := []struct {
		name  string
		body  string
		check func(t *testing.T, m map[string]any)
	}{
		{
			name: "value_not_in_list for an unknown checkpoint",
			body: body(workflow{ckpt: "missing.safetensors"}.json(), "", ""),
			check: func(t *testing.T, m map[string]any) {
				require.Equal(t, map[string]any{"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
					"details": "", "extra_info": map[string]any{}}, m["error"])
				require.Equal(t, map[string]any{"4": map[string]any{
					"errors": []any{map[string]any{"type": "value_not_in_list", "message": "Value not in list",
						"details":    "ckpt_name: 'missing.safetensors' not in ['v1-5-pruned-emaonly.safetensors']",
						"extra_info": map[string]any{"input_name": "ckpt_name", "input_config": ckptCfg, "received_value": "missing.safetensors"}}},
					"dependent_outputs": []any{"9"}, "class_type": "CheckpointLoaderSimple"}}, m["node_errors"])
			},
		},
		{
			name: "value_not_in_list over 20 options hides the list",
			body: body(strings.Replace(workflow{}.json(), `"euler"`, `"eulerx"`, 1), "", ""),
			check: func(t *testing.T, m map[string]any) {
				r := reasonOf(t, m, "3")
				require.Equal(t, "sampler_name: 'eulerx' not in (list of length 44)", r["details"])
				require.Nil(t, obj(t, r, "extra_info")["input_config"])
			},
		},
		{
			name: "prompt_no_outputs",
			body: `{"prompt": {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x"}}}}`,
			check: func(t *testing.T, m map[string]any) {
				require.Equal(t, map[string]any{"error": map[string]any{"type": "prompt_no_outputs", "message": "Prompt has no outputs",
					"details": "", "extra_info": map[string]any{}}, "node_errors": map[string]any{}}, m)
			},
		},
		{
			name: "empty prompt has no outputs",
			body: `{"prompt": {}}`,
			check: func(t *testing.T, m map[string]any) {
				require.Equal(t, "prompt_no_outputs", obj(t, m, "error")["type"])
			},
		},
		{
			name: "missing_node_type for an unknown class",
			body: `{"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}, "_meta": {"title": "My Node"}}}}`,
			check: func(t *testing.T, m map[string]any) {
				require.Equal(t, map[string]any{"type": "missing_node_type",
					"message": "Node 'My Node' not found. The custom node may not be installed.", "details": "Node ID '#1'",
					"extra_info": map[string]any{"node_id": "1", "class_type": "NoSuchNode", "node_title": "My Node"}}, m["error"])
				require.Equal(t, map[string]any{}, m["node_errors"])
			},
		},
		{
			name: "missing_node_type without class_type",
			body: `{"prompt": {"7": {"inputs": {}}}}`,
			check: func(t *testing.T, m map[string]any) {
				require.Equal(t, map[string]any{"type": "missing_node_type",
					"message": "Node 'ID #7' has no class_type. The workflow may be corrupted or a custom node is missing.", "details": "Node ID '#7'",
					"extra_info": map[string]any{"node_id": "7", "class_type": nil, "node_title": nil}}, m["error"])
			},
		},
		{
			name: "required_input_missing",
			body: body(strings.Replace(workflow{}.json(), `"model": ["4", 0], `, "", 1), "", ""),
			check: func(t *testing.T, m map[string]any) {
				require.Equal(t, map[string]any{"errors": []any{map[string]any{"type": "required_input_missing", "message": "Required input is missing",
					"details": "model", "extra_info": map[string]any{"input_name": "model"}}},
					"dependent_outputs": []any{"9"}, "class_type": "KSampler"}, obj(t, m, "node_errors", "3"))
			},
		},
		{
			name: "invalid_prompt_id",
			body: body(workflow{}.json(), "", "3F0E8C52-9D1B-4F6A-A9B1-2C7E5D4F8A10"),
			check: func(t *testing.T, m map[string]any) {
				require.Equal(t, map[string]any{"error": map[string]any{"type": "invalid_prompt_id", "message": "prompt_id must be a valid UUID",
					"details":    "prompt_id must be a UUID string in canonical lowercase hyphenated form; omit it to let the server generate one",
					"extra_info": map[string]any{}}, "node_errors": map[string]any{}}, m)
			},
		},
		{
			name: "no_prompt",
			body: `{"client_id": "x"}`,
			check: func(t *testing.T, m map[string]any) {
				require.Equal(t, "no_prompt", obj(t, m, "error")["type"])
				require.Equal(t, "No prompt provided", obj(t, m, "error")["details"])
			},
		},
		{
			name: "exception_during_validation for an int link on the output",
			body: body(strings.Replace(workflow{}.json(), `"images": ["8", 0]`, `"images": [8, 0]`, 1), "", ""),
			check: func(t *testing.T, m map[string]any) {
				r := reasonOf(t, m, "9")
				require.Equal(t, "exception_during_validation", r["type"])
				require.Equal(t, "Exception when validating node", r["message"])
				require.Equal(t, "8", r["details"])
				require.Equal(t, "KeyError", obj(t, r, "extra_info")["exception_type"])
				require.Equal(t, "Exception when validating node: 8", obj(t, m, "error")["details"])
			},
		},
		{
			name: "exception_during_inner_validation upstream",
			body: body(strings.Replace(workflow{}.json(), `"model": ["4", 0]`, `"model": [4, 0]`, 1), "", ""),
			check: func(t *testing.T, m map[string]any) {
				r := reasonOf(t, m, "3")
				require.Equal(t, "exception_during_inner_validation", r["type"])
				require.Equal(t, "4", r["details"])
				require.Equal(t, "samples", obj(t, r, "extra_info")["input_name"])
				require.Equal(t, []any{"3", json.Number("0")}, obj(t, r, "extra_info")["linked_node"])
				require.Equal(t, "", obj(t, m, "error")["details"], "the output's own reasons are empty")
			},
		},
		{
			name: "value_smaller_than_min",
			body: body(strings.Replace(workflow{}.json(), `"steps": 2`, `"steps": 0`, 1), "", ""),
			check: func(t *testing.T, m map[string]any) {
				r := reasonOf(t, m, "3")
				require.Equal(t, "value_smaller_than_min", r["type"])
				require.Equal(t, "Value 0 smaller than min of 1", r["message"])
				require.Equal(t, "steps", r["details"])
				require.Equal(t, json.Number("0"), obj(t, r, "extra_info")["received_value"])
			},
		},
		{
			name: "value_bigger_than_max on a 65-bit seed",
			body: body(workflow{seed: "18446744073709551616"}.json(), "", ""),
			check: func(t *testing.T, m map[string]any) {
				r := reasonOf(t, m, "3")
				require.Equal(t, "Value 18446744073709551616 bigger than max of 18446744073709551615", r["message"])
			},
		},
		{
			name: "float min message",
			body: body(strings.Replace(workflow{}.json(), `"cfg": 8`, `"cfg": -1`, 1), "", ""),
			check: func(t *testing.T, m map[string]any) {
				require.Equal(t, "Value -1.0 smaller than min of 0.0", reasonOf(t, m, "3")["message"])
			},
		},
		{
			name: "invalid_input_type",
			body: body(strings.Replace(workflow{}.json(), `"steps": 2`, `"steps": "abc"`, 1), "", ""),
			check: func(t *testing.T, m map[string]any) {
				r := reasonOf(t, m, "3")
				require.Equal(t, "invalid_input_type", r["type"])
				require.Equal(t, "Failed to convert an input value to a INT value", r["message"])
				require.Equal(t, "steps, abc, invalid literal for int() with base 10: 'abc'", r["details"])
			},
		},
		{
			name: "return_type_mismatch",
			body: body(strings.Replace(workflow{}.json(), `"vae": ["4", 2]`, `"vae": ["4", 0]`, 1), "", ""),
			check: func(t *testing.T, m map[string]any) {
				r := reasonOf(t, m, "8")
				require.Equal(t, "return_type_mismatch", r["type"])
				require.Equal(t, "vae, received_type(MODEL) mismatch input_type(VAE)", r["details"])
				require.Equal(t, "MODEL", obj(t, r, "extra_info")["received_type"])
			},
		},
		{
			name: "bad_linked_input",
			body: body(strings.Replace(workflow{}.json(), `"vae": ["4", 2]`, `"vae": ["4"]`, 1), "", ""),
			check: func(t *testing.T, m map[string]any) {
				r := reasonOf(t, m, "8")
				require.Equal(t, "bad_linked_input", r["type"])
				require.Equal(t, "Bad linked input, must be a length-2 list of [node_id, slot_index]", r["message"])
			},
		},
		{
			name: "custom_validation_failed for a missing LoadImage file",
			body: `{"prompt": {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "p"}}}}`,
			check: func(t *testing.T, m map[string]any) {
				require.Equal(t, []any{map[string]any{"type": "custom_validation_failed", "message": "Custom validation failed for node",
					"details": "image - Invalid image file: x.png", "extra_info": map[string]any{"input_name": "image"}}},
					obj(t, m, "node_errors", "1")["errors"])
			},
		},
		{
			name: "dependency_cycle",
			body: `{"prompt": {"1": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}, "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}}`,
			check: func(t *testing.T, m map[string]any) {
				r := reasonOf(t, m, "1")
				require.Equal(t, "dependency_cycle", r["type"])
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, b := h.post("/prompt", tt.body)
			require.Equal(t, http.StatusBadRequest, st, "body: %s", b)
			tt.check(t, decode(t, b))
		})
	}
}

// reasonOf returns the first reason of node_errors[id].
func reasonOf(t *testing.T, m map[string]any, id string) map[string]any {
	t.Helper()
	errs := obj(t, m, "node_errors", id)["errors"].([]any)
	require.NotEmpty(t, errs)
	return errs[0].(map[string]any)
}

func TestPartialValidationSuccess(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	prompt := workflow{extraNodes: `"10": {"class_type": "SaveImage", "inputs": {"filename_prefix": "bad", "images": ["4", 0]}}`}.json()
	pid := newID()
	st, b := h.post("/prompt", body(prompt, "", pid))
	require.Equal(t, http.StatusOK, st, "%s", b)
	m := decode(t, b)
	r := reasonOf(t, m, "10")
	require.Equal(t, "return_type_mismatch", r["type"])
	e := h.history(pid)
	require.Equal(t, []any{"9"}, e["prompt"].([]any)[4], "only the valid output runs")
	require.Contains(t, obj(t, e, "outputs"), "9")
}

func TestSeedRoundTripsExactly(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	pid := newID()
	h.submit(body(workflow{seed: "18446744073709551615"}.json(), "", pid))
	h.history(pid)
	_, raw := h.get("/history/" + pid)
	require.Contains(t, string(raw), `"seed": 18446744073709551615`)
	require.Contains(t, string(raw), `"cfg": 8.0`, "FLOAT inputs are coerced and echoed as floats")
	e := decode(t, raw)[pid].(map[string]any)
	inputs := obj(t, e["prompt"].([]any)[2], "3", "inputs")
	require.Equal(t, json.Number("18446744073709551615"), inputs["seed"])

	_, all := h.get("/history")
	require.Contains(t, string(all), `"seed": 18446744073709551615`)
}

func TestCoercionRewritesPrompt(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	prompt := strings.NewReplacer(`"steps": 2`, `"steps": "2"`, `"width": 64`, `"width": 64.9`, `"text": "a cat"`, `"text": 42`).Replace(workflow{}.json())
	pid := newID()
	h.submit(body(prompt, "", pid))
	h.history(pid)
	_, raw := h.get("/history/" + pid)
	for _, want := range []string{`"steps": 2,`, `"width": 64,`, `"text": "42"`, `"denoise": 1.0`} {
		require.Contains(t, string(raw), want)
	}
}

func TestPromptRequestEdgeCases(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})

	st, b, hdr := h.do(http.MethodPost, "/prompt", "application/json", strings.NewReader(`{not json`))
	require.Equal(t, http.StatusInternalServerError, st)
	require.Equal(t, "500 Internal Server Error\n\nServer got itself in trouble", string(b))
	require.Contains(t, hdr.Get("Content-Type"), "text/plain")

	// A UI-format workflow is a 500 since v0.14.
	st, _ = h.post("/prompt", `{"prompt": {"last_node_id": 9, "nodes": [], "links": []}}`)
	require.Equal(t, http.StatusInternalServerError, st)

	// number is echoed as a float and does not move the counter; front is
	// negative; failed submissions consume numbers (the UI-format 500 above
	// took 0).
	m := h.submit(`{"prompt": ` + workflow{}.json() + `, "number": 5}`)
	require.Equal(t, json.Number("5.0"), m["number"])
	st, _ = h.post("/prompt", `{"nope": 1}`) // consumes number 1
	require.Equal(t, http.StatusBadRequest, st)
	m = h.submit(`{"prompt": ` + workflow{seed: "3"}.json() + `, "front": true}`)
	require.Equal(t, json.Number("-2"), m["number"])
	m = h.submit(body(workflow{seed: "4"}.json(), "", ""))
	require.Equal(t, json.Number("3"), m["number"])
	require.Regexp(t, `^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`, m["prompt_id"])

	// Also under /api.
	m2 := decode(t, func() []byte { _, b := h.post("/api/prompt", body(workflow{seed: "5"}.json(), "", "")); return b }())
	require.Contains(t, m2, "prompt_id")

	_, b = h.get("/prompt")
	require.Contains(t, decode(t, b), "exec_info")
}

func TestSecretsNeverVisible(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	h.sim.SetFault(comfysim.Fault{HangAtStep: 1})
	pid := newID()
	h.submit(`{"prompt": ` + workflow{}.json() + `, "prompt_id": "` + pid + `", "client_id": "c",
		"extra_data": {"api_key_comfy_org": "comfyui-secret", "auth_token_comfy_org": "tok-secret", "extra_pnginfo": {"workflow": {"id": "wf-1"}}}}`)
	require.Eventually(t, func() bool { return h.sim.Stats().Running == pid }, waitFor, 1e6)
	_, q := h.get("/queue")
	require.NotContains(t, string(q), "secret")
	running := decode(t, q)["queue_running"].([]any)
	require.Len(t, running, 1)
	item := running[0].([]any)
	require.Len(t, item, 5)
	extra := item[3].(map[string]any)
	require.Equal(t, "c", extra["client_id"])
	require.NotNil(t, extra["create_time"])
	h.sim.SetFault(comfysim.Fault{})
	h.history(pid)
	_, hist := h.get("/history/" + pid)
	require.NotContains(t, string(hist), "secret")
	_, job := h.get("/api/jobs/" + pid)
	require.NotContains(t, string(job), "secret")
	require.Equal(t, "wf-1", decode(t, job)["workflow_id"])
}

func TestPartialExecutionTargets(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	prompt := workflow{extraNodes: `"10": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}`}.json()
	pid := newID()
	h.submit(`{"prompt": ` + prompt + `, "prompt_id": "` + pid + `", "partial_execution_targets": ["10"]}`)
	e := h.history(pid)
	require.Equal(t, []any{"10"}, e["prompt"].([]any)[4])
	st, b := h.post("/prompt", `{"prompt": `+prompt+`, "partial_execution_targets": ["8"]}`)
	require.Equal(t, http.StatusBadRequest, st)
	require.Equal(t, "prompt_no_outputs", obj(t, decode(t, b), "error")["type"])
}

func TestBodyTooLarge(t *testing.T) {
	t.Parallel()
	h := setup(t, comfysim.Config{})
	big := bytes.Repeat([]byte(" "), 100*1024*1024+1)
	st, b, _ := h.do(http.MethodPost, "/prompt", "application/json", bytes.NewReader(big))
	require.Equal(t, http.StatusRequestEntityTooLarge, st)
	require.Contains(t, string(b), "Maximum request body size 104857600 exceeded")
}
