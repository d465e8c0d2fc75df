package proto

import "testing"

func TestModelURLKey(t *testing.T) {
	for _, c := range []struct{ raw, want string }{
		{"https://huggingface.co/a/b/resolve/main/x.safetensors", "https://huggingface.co/a/b/resolve/main/x.safetensors"},
		{"HTTPS://User:Pass@Example.COM/x.safetensors#frag", "https://example.com/x.safetensors"},
		{"https://civitai.com/api/download/models/12?type=Model&token=s3cret&format=SafeTensor", "https://civitai.com/api/download/models/12?format=SafeTensor&type=Model"},
		{"https://b.s3.amazonaws.com/k.safetensors?X-Amz-Signature=abc&X-Amz-Credential=id&X-Amz-Expires=60", "https://b.s3.amazonaws.com/k.safetensors"},
		{"https://storage.googleapis.com/b/k?X-Goog-Signature=abc", "https://storage.googleapis.com/b/k"},
		{"https://a.blob.core.windows.net/c/k?sv=2020&sig=abc&se=2026", "https://a.blob.core.windows.net/c/k"},
		{"https://x.test/m?", "https://x.test/m"},
		{"not a url", "(invalid URL)"},
		{"https://%zz", "(invalid URL)"},
	} {
		if got := ModelURLKey(c.raw); got != c.want {
			t.Errorf("ModelURLKey(%q) = %q, want %q", c.raw, got, c.want)
		}
	}
}

func TestIsModelURL(t *testing.T) {
	for s, want := range map[string]bool{
		"https://x.test/a.safetensors": true,
		"HTTP://x.test/a":              true,
		"https://":                     false,
		"model.safetensors":            false,
		"sub/https://x":                false,
		"":                             false,
	} {
		if got := IsModelURL(s); got != want {
			t.Errorf("IsModelURL(%q) = %v, want %v", s, got, want)
		}
	}
}
