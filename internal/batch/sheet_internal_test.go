package batch

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/proto"
)

// TestContactSheetEscapesAndShowsEveryKind: the sheet shows pictures,
// videos and audio by their relative paths, a failed item's error, and
// escapes whatever the batch's input or the fleet put in names, values and
// errors, so opening it runs nothing.
func TestContactSheetEscapesAndShowsEveryKind(t *testing.T) {
	t.Parallel()
	rs := []Result{
		{Item: "seed-1", Status: proto.StatusCompleted, Params: map[string]json.RawMessage{"6.inputs.text": json.RawMessage(`"<script>alert(1)</script>"`)},
			Files: []File{{Kind: "images", Path: "seed-1/seed-1_a.png"}, {Kind: "videos", Path: "seed-1/seed-1_v.mp4"}, {Kind: "audio", Path: "seed-1/seed-1_s.flac"}}},
		{Item: "seed-2", Status: proto.StatusFailed, Error: `Node 3: "<img src=x onerror=alert(1)>"`, Files: []File{}},
	}
	var b bytes.Buffer
	require.NoError(t, writeSheet(&b, "b-1", paramNames(rs), rs))
	page := b.String()
	require.Contains(t, page, `<img src="seed-1/seed-1_a.png"`)
	require.Contains(t, page, `<video src="seed-1/seed-1_v.mp4" controls`)
	require.Contains(t, page, `<audio src="seed-1/seed-1_s.flac" controls`)
	require.Contains(t, page, "1 COMPLETED, 1 FAILED")
	require.NotContains(t, page, "<script>alert")
	require.NotContains(t, page, "<img src=x")
	require.Contains(t, page, "&lt;script&gt;alert(1)&lt;/script&gt;")

	b.Reset()
	require.NoError(t, writeCSV(&b, paramNames(rs), rs))
	require.Equal(t, "item,status,job_id,try,error,6.inputs.text,files,worker_id,delay_ms,execution_ms\n"+
		"seed-1,COMPLETED,,1,,<script>alert(1)</script>,seed-1/seed-1_a.png seed-1/seed-1_v.mp4 seed-1/seed-1_s.flac,,0,0\n"+
		`seed-2,FAILED,,1,"Node 3: ""<img src=x onerror=alert(1)>""",,,,0,0`+"\n", b.String(), "a string parameter without its quotes")
}
