package modelcache

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// The worker's tokens go to their own services' hosts only.
func TestTokenHosts(t *testing.T) {
	t.Parallel()
	c := &Cache{cfg: Config{HFToken: "hf", CivitAIToken: "civ"}}
	for host, want := range map[string]string{
		"huggingface.co": "hf", "cdn-lfs.huggingface.co": "hf", "hf.co": "hf", "HuggingFace.co.": "hf",
		"civitai.com": "civ", "www.civitai.com": "civ",
		"evilhuggingface.co": "", "huggingface.co.evil.com": "", "civitai.com.evil.org": "", "example.com": "",
	} {
		require.Equal(t, want, c.tokenFor(host), host)
	}
}

func TestEntryKeyKeepsCredentialsApart(t *testing.T) {
	t.Parallel()
	plain := entryKey(Request{URL: "https://h.example/a.safetensors", Folder: "loras"})
	require.Equal(t, "loras|https://h.example/a.safetensors", plain)
	signed := entryKey(Request{URL: "https://h.example/a.safetensors?X-Amz-Signature=1", Folder: "loras"})
	withHeader := entryKey(Request{URL: "https://h.example/a.safetensors", Folder: "loras", Headers: map[string]string{"X-Key": "k"}})
	require.NotEqual(t, plain, signed)
	require.NotEqual(t, plain, withHeader)
	require.NotContains(t, signed+withHeader, "Signature=1")
	require.Equal(t, plain, entryKey(Request{URL: "https://h.example/a.safetensors?", Folder: "loras"}))
}
