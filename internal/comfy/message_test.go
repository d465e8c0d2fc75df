package comfy

import (
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/require"
)

const pid = "3f0e8c52-9d1b-4f6a-a9b1-2c7e5d4f8a10"

func TestDecodeMessage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		want message
	}{
		{
			name: "status is only typed",
			in:   `{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "x"}}`,
			want: message{Type: "status"},
		},
		{
			name: "executing a node",
			in:   `{"type": "executing", "data": {"node": "3", "display_node": "3", "prompt_id": "` + pid + `"}}`,
			want: message{Type: "executing", PromptID: pid, Node: "3"},
		},
		{
			name: "executing null ends the prompt",
			in:   `{"type": "executing", "data": {"node": null, "prompt_id": "` + pid + `"}}`,
			want: message{Type: "executing", PromptID: pid, Finished: true},
		},
		{
			name: "executing after a reconnect has no prompt id",
			in:   `{"type": "executing", "data": {"node": "3"}}`,
			want: message{Type: "executing", Node: "3"},
		},
		{
			name: "progress tick",
			in:   `{"type": "progress", "data": {"value": 7, "max": 20, "prompt_id": "` + pid + `", "node": "3"}}`,
			want: message{Type: "progress", PromptID: pid, Progress: []Progress{{PromptID: pid, Node: "3", Value: 7, Max: 20}}},
		},
		{
			name: "progress_state keeps node order and prefers the display id",
			in: `{"type": "progress_state", "data": {"prompt_id": "` + pid + `", "nodes": {
				"4": {"value": 1.0, "max": 1.0, "state": "finished", "node_id": "4", "display_node_id": "4"},
				"5.0.0.3": {"value": 7, "max": 20, "state": "running", "node_id": "5.0.0.3", "display_node_id": "5"}}}}`,
			want: message{Type: "progress_state", PromptID: pid, Progress: []Progress{
				{PromptID: pid, Node: "4", Value: 1, Max: 1, State: "finished"},
				{PromptID: pid, Node: "5", Value: 7, Max: 20, State: "running"},
			}},
		},
		{
			name: "success",
			in:   `{"type": "execution_success", "data": {"prompt_id": "` + pid + `", "timestamp": 1767225612345}}`,
			want: message{Type: "execution_success", PromptID: pid, Outcome: outcomeSuccess},
		},
		{
			name: "execution error with NaN in current inputs",
			in: `{"type": "execution_error", "data": {"prompt_id": "` + pid + `", "node_id": "4", "node_type": "CheckpointLoaderSimple",
				"executed": ["5"], "exception_message": "boom\n", "exception_type": "RuntimeError", "traceback": ["  File x\n"],
				"current_inputs": {"cfg": [NaN]}, "current_outputs": ["3"], "timestamp": 1}}`,
			want: message{Type: "execution_error", PromptID: pid, Outcome: outcomeError, ExecErr: &ExecutionError{
				PromptID: pid, NodeID: "4", NodeType: "CheckpointLoaderSimple", ExceptionType: "RuntimeError",
				ExceptionMessage: "boom\n", Traceback: []string{"  File x\n"}, Executed: []string{"5"},
				CurrentInputs: []byte(`{"cfg": [null]}`),
			}},
		},
		{
			name: "execution blocked is not an outcome",
			in: `{"type": "execution_error", "data": {"prompt_id": "` + pid + `", "node_id": "7", "node_type": "X",
				"exception_message": "Execution Blocked: no", "exception_type": "ExecutionBlocked", "traceback": [],
				"current_inputs": [], "current_outputs": []}}`,
			want: message{Type: "execution_error", PromptID: pid},
		},
		{
			name: "interrupted",
			in:   `{"type": "execution_interrupted", "data": {"prompt_id": "` + pid + `", "node_id": "3", "node_type": "KSampler", "executed": ["4"], "timestamp": 1}}`,
			want: message{Type: "execution_interrupted", PromptID: pid, Outcome: outcomeInterrupted,
				Interrupted: &InterruptedError{PromptID: pid, NodeID: "3", NodeType: "KSampler", Executed: []string{"4"}}},
		},
		{
			name: "unknown type",
			in:   `{"type": "assets.seed.done", "data": 5}`,
			want: message{Type: "assets.seed.done"},
		},
		{
			name: "data of the wrong shape",
			in:   `{"type": "progress", "data": [1, 2]}`,
			want: message{Type: "progress", Progress: []Progress{{}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := decodeMessage([]byte(tt.in))
			require.NoError(t, err)
			if tt.want.ExecErr != nil && got.ExecErr != nil {
				require.JSONEq(t, string(tt.want.ExecErr.CurrentInputs), string(got.ExecErr.CurrentInputs))
				tt.want.ExecErr.CurrentInputs, got.ExecErr.CurrentInputs = nil, nil
			}
			require.Equal(t, tt.want, got)
		})
	}
}

func TestDecodeMessageRejects(t *testing.T) {
	t.Parallel()
	for _, in := range []string{``, `[]`, `null`, `{"data": {}}`, `{"type": null}`, `{"type":`} {
		_, err := decodeMessage([]byte(in))
		require.Error(t, err, in)
	}
}

func binFrame(typ, word uint32, rest ...[]byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, typ)
	b = binary.BigEndian.AppendUint32(b, word)
	for _, r := range rest {
		b = append(b, r...)
	}
	return b
}

func TestDecodePreview(t *testing.T) {
	t.Parallel()
	p, ok := decodePreview(binFrame(1, 2, []byte("PNGDATA")))
	require.True(t, ok)
	require.Equal(t, Preview{MediaType: "image/png", Data: []byte("PNGDATA")}, p)

	p, ok = decodePreview(binFrame(1, 1, []byte("J")))
	require.True(t, ok)
	require.Equal(t, "image/jpeg", p.MediaType)

	meta := []byte(`{"node_id": "3", "prompt_id": "` + pid + `", "display_node_id": "3", "parent_node_id": null, "real_node_id": "3", "image_type": "image/jpeg"}`)
	p, ok = decodePreview(binFrame(4, uint32(len(meta)), meta, []byte("JPEG")))
	require.True(t, ok)
	require.Equal(t, Preview{PromptID: pid, NodeID: "3", MediaType: "image/jpeg", Data: []byte("JPEG")}, p)

	_, ok = decodePreview(binFrame(4, 1000, []byte("short")))
	require.False(t, ok, "metadata length beyond the frame")
	_, ok = decodePreview(binFrame(3, 1, []byte("3hello")))
	require.False(t, ok, "text frames are not previews")
	_, ok = decodePreview([]byte{0, 0, 0, 1})
	require.False(t, ok, "truncated header")
}

func FuzzDecodeMessage(f *testing.F) {
	f.Add([]byte(`{"type": "executing", "data": {"node": null, "prompt_id": "p"}}`))
	f.Add([]byte(`{"type": "progress_state", "data": {"prompt_id": "p", "nodes": {"3": {"value": 1, "max": 2, "state": "running"}}}}`))
	f.Add([]byte(`{"type": "execution_error", "data": {"prompt_id": "p", "current_inputs": [], "traceback": "x", "exception_type": "ExecutionBlocked"}}`))
	f.Add([]byte(`{"type": "execution_interrupted", "data": {"prompt_id": "p", "executed": [1, "2"]}}`))
	f.Add([]byte(`{"type": "progress", "data": {"value": NaN, "max": -Infinity, "node": 3}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMessage(b)
		if err != nil {
			return
		}
		if m.Finished && m.Node != "" {
			t.Fatalf("finished message with a node: %+v", m)
		}
		if (m.Outcome == outcomeError) != (m.ExecErr != nil) || (m.Outcome == outcomeInterrupted) != (m.Interrupted != nil) {
			t.Fatalf("outcome without its detail: %+v", m)
		}
	})
}

func FuzzDecodePreview(f *testing.F) {
	f.Add(binFrame(1, 1, []byte("jpeg")))
	f.Add(binFrame(4, 2, []byte(`{}png`)))
	f.Add(binFrame(4, 0xffffffff))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, ok := decodePreview(b)
		if ok && len(p.Data) > len(b) {
			t.Fatalf("preview data longer than the frame")
		}
	})
}
