package runpod_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/comfyfleet/comfyfleet/internal/blob"
	"github.com/comfyfleet/comfyfleet/internal/queue"
	"github.com/comfyfleet/comfyfleet/internal/runpod"
	"github.com/comfyfleet/comfyfleet/internal/testenv"
	"github.com/comfyfleet/comfyfleet/proto"
)

// TestImagesOffloadedAndInlinedAgain: a large input image leaves the job
// message for the blob store, every other input field staying as sent,
// and comes back inline for a worker that knows no blob store.
func TestImagesOffloadedAndInlinedAgain(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	ctx := testenv.Context(t, 30*time.Second)
	blobs, err := queue.OpenObjectStore(ctx, n.JS, queue.ObjectStoreConfig{})
	require.NoError(t, err)
	big := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("png!"), 600))
	raw := json.RawMessage(`{"workflow":{"3":{"inputs":{"seed":18446744073709551615}}},"images":[{"name":"big.png","image":"` + big + `"},{"name":"s.png","image":"AAAA"}],"mock_return":"x","comfy_org_api_key":"k"}`)
	in, err := proto.DecodeInput(raw)
	require.NoError(t, err)
	out, err := runpod.OffloadImages(ctx, blobs, proto.DefaultTenant, "job-1", raw, in, 1024)
	require.NoError(t, err)
	require.NotContains(t, string(out), big)
	require.Contains(t, string(out), `"mock_return":"x"`, "fields the fleet does not know are kept")
	require.Contains(t, string(out), `18446744073709551615`)
	require.Contains(t, string(out), `"blob":"in/default/job-1/big.png"`)

	back, err := runpod.InlineImages(ctx, blobs, out)
	require.NoError(t, err)
	again, err := proto.DecodeInput(back)
	require.NoError(t, err)
	require.Equal(t, []proto.InputImage{{Name: "big.png", Image: big}, {Name: "s.png", Image: "AAAA"}}, again.Images)
	require.Contains(t, string(back), `"mock_return":"x"`)
	require.Contains(t, string(back), `"comfy_org_api_key":"k"`)

	same, err := runpod.InlineImages(ctx, blobs, raw)
	require.NoError(t, err)
	require.Equal(t, string(raw), string(same), "nothing to inline: unchanged")
	_, err = runpod.InlineImages(context.Background(), blobs, json.RawMessage(`{"workflow":{},"images":[{"name":"x","blob":"in/none/x"}]}`))
	require.ErrorIs(t, err, blob.ErrNotFound)
}
