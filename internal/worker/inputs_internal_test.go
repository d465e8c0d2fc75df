package worker

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRewriteInputRefs(t *testing.T) {
	t.Parallel()
	repl := map[string]string{"a.png": "comfyfleet/j1/a.png", "mask.png": "comfyfleet/j1/mask.png"}
	tests := []struct {
		name, in, want string
		n              int
	}{
		{
			name: "direct inputs only, bytes elsewhere untouched",
			in: `{"1": {"class_type": "LoadImage", "inputs": {"image": "a.png", "upload": "image"}, "_meta": {"title": "a.png"}},
 "3": {"inputs": {"seed": 18446744073709551615, "cfg": 7.50, "list": ["a.png", 0], "obj": {"image": "a.png"}}}}`,
			want: `{"1": {"class_type": "LoadImage", "inputs": {"image": "comfyfleet/j1/a.png", "upload": "image"}, "_meta": {"title": "a.png"}},
 "3": {"inputs": {"seed": 18446744073709551615, "cfg": 7.50, "list": ["a.png", 0], "obj": {"image": "a.png"}}}}`,
			n: 1,
		},
		{
			name: "annotation and escapes",
			in:   `{"1":{"inputs":{"image":"a.png [input]","mask":"mask\u002epng","other":"a.png [output]"}}}`,
			want: `{"1":{"inputs":{"image":"comfyfleet/j1/a.png [input]","mask":"comfyfleet/j1/mask.png","other":"a.png [output]"}}}`,
			n:    2,
		},
		{
			name: "odd shapes are skipped",
			in:   `{"1": "a.png", "2": {"inputs": "a.png"}, "3": {"inputs": []}, "4": {"inputs": {}}, "5": null}`,
			want: `{"1": "a.png", "2": {"inputs": "a.png"}, "3": {"inputs": []}, "4": {"inputs": {}}, "5": null}`,
		},
		{
			name: "no HTML escaping in what is written",
			in:   `{"1":{"inputs":{"image":"a.png"}}}`,
			want: `{"1":{"inputs":{"image":"comfyfleet/j1/a.png"}}}`,
			n:    1,
		},
	}
	for _, tt := range tests {
		got, n, err := rewriteInputRefs([]byte(tt.in), repl)
		require.NoError(t, err, tt.name)
		require.Equal(t, tt.want, string(got), tt.name)
		require.Equal(t, tt.n, n, tt.name)
	}
	got, _, err := rewriteInputRefs([]byte(`{"1":{"inputs":{"image":"<a&b>.png"}}}`), map[string]string{"<a&b>.png": "x/<a&b>.png"})
	require.NoError(t, err)
	require.Equal(t, `{"1":{"inputs":{"image":"x/<a&b>.png"}}}`, string(got))
	_, _, err = rewriteInputRefs([]byte(`{"1":{"inputs":{"image":"a.png"`), repl)
	require.Error(t, err)
}

func TestParseInputURL(t *testing.T) {
	t.Parallel()
	g, err := inputGuard(Config{}, nil)
	require.NoError(t, err)
	gHTTP, err := inputGuard(Config{InputURLAllowHTTP: true}, nil)
	require.NoError(t, err)
	u, red, err := parseInputURL(g, " https://user:pw@cdn.example.com/a/b.png?X-Amz-Signature=s3cr3t#frag ")
	require.NoError(t, err)
	require.Equal(t, "cdn.example.com", u.Host)
	require.Equal(t, "https://cdn.example.com/a/b.png?…", red)
	_, red, err = parseInputURL(g, "http://example.com/a.png")
	require.EqualError(t, err, "input URL: only https URLs are accepted, not http (INPUT_URL_ALLOW_HTTP allows http)")
	require.Equal(t, "http://example.com/a.png", red)
	_, _, err = parseInputURL(gHTTP, "http://example.com/a.png")
	require.NoError(t, err)
	_, red, err = parseInputURL(g, "https://%zz")
	require.EqualError(t, err, "invalid URL")
	require.Empty(t, red)
	_, _, err = parseInputURL(g, "https:///path")
	require.EqualError(t, err, "input URL: URL has no host")
	_, red, err = parseInputURL(g, "https://2130706433/a.png?sig=s")
	require.EqualError(t, err, "input URL: address not allowed: 127.0.0.1:443 is a loopback address (INPUT_URL_ALLOW lists exceptions)")
	require.Equal(t, "https://2130706433/a.png?…", red)
	require.True(t, isURL("HTTPS://x"))
	require.False(t, isURL("data:image/png;base64,AAAA"))
	require.False(t, isURL("iVBORw0KGgo="))
}

func TestDecodeOptions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    options
		wantErr string
	}{
		{in: `{"workflow":{}}`},
		{in: `{"previews":true,"include_temp":true}`, want: options{previews: "auto", includeTemp: true}},
		{in: `{"previews":"taesd"}`, want: options{previews: "taesd"}},
		{in: `{"previews":false}`},
		{in: `"{\"previews\":\"latent2rgb\"}"`, want: options{previews: "latent2rgb"}},
		{in: `{"previews":"sometimes"}`, wantErr: "'previews' must be"},
		{in: `{"previews":1}`, wantErr: "'previews' must be"},
		{in: `{"include_temp":"yes"}`, wantErr: "'include_temp' must be true or false"},
		{in: `null`},
	}
	for _, tt := range tests {
		got, err := decodeOptions([]byte(tt.in))
		if tt.wantErr != "" {
			require.ErrorContains(t, err, tt.wantErr, tt.in)
			continue
		}
		require.NoError(t, err, tt.in)
		require.Equal(t, tt.want, got, tt.in)
	}
}

func TestContentType(t *testing.T) {
	t.Parallel()
	png := []byte("\x89PNG\r\n\x1a\n0000")
	require.Equal(t, "image/png", contentType(png, "photo.jpg"), "the bytes win over the name")
	require.Equal(t, "audio/flac", contentType([]byte("fLaC????"), "a.flac"), "sniffing knows no FLAC: the extension decides")
	require.Equal(t, "application/octet-stream", contentType([]byte{0, 1, 2}, "blob"))
	require.Equal(t, "video/webm", contentType([]byte("\x1A\x45\xDF\xA3"), "a.bin"))
}
