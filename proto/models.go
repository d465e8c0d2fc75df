package proto

import (
	"net/url"
	"strings"
)

// Models fetched by URL. A job may name a model file by an https:// URL,
// in a loader input of its workflow ("lora_name": "https://…") or in
// input.models; the worker fetches it into its model cache and rewrites
// the workflow to the cached file's name. The heartbeat reports the
// cached files ([Heartbeat.Cached]) so that the next job wanting one goes
// to a worker that holds it.

// ModelRef is one entry of input.models: a file a node reads without a
// loader input naming it, fetched into Folder before the prompt runs.
type ModelRef struct {
	// URL is where the file is fetched from (https://).
	URL string `json:"url"`
	// Folder is the ComfyUI model folder it goes in ("loras",
	// "checkpoints", "vae", …).
	Folder string `json:"folder"`
	// Name, when set, is the readable part of the cached file's name;
	// otherwise the URL's last path element.
	Name string `json:"name,omitempty"`
	// SHA256, when set, is the file's hex digest, verified after download.
	SHA256 string `json:"sha256,omitempty"`
}

// CachedModel is a model file a worker holds in its model cache.
type CachedModel struct {
	// URL is the URL it was fetched from as [ModelURLKey] gives it: no
	// credentials, so it can sit in Redis and answers.
	URL string `json:"url"`
	// SHA256 is the file's hex digest.
	SHA256 string `json:"sha256,omitempty"`
	// Folder is its ComfyUI model folder ("loras", …).
	Folder string `json:"folder"`
	// File is the name ComfyUI lists it by in that folder (what the
	// workflow's input is rewritten to).
	File string `json:"file"`
}

// IsModelURL reports whether a loader input's value names a model by URL
// rather than by a file name of ComfyUI's folders.
func IsModelURL(s string) bool {
	return len(s) > len("https://") && strings.EqualFold(s[:len("https://")], "https://") ||
		len(s) > len("http://") && strings.EqualFold(s[:len("http://")], "http://")
}

// secretParams are query parameters that carry credentials or a
// signature's parts: presigned S3, GCS and Azure URLs, and the tokens
// CivitAI and others take in the query.
var secretParams = []string{
	"token", "access_token", "api_key", "apikey", "key", "sig", "signature",
	"se", "sp", "sv", "sr", "st", "skoid", "sktid", "skt", "ske", "sks", "skv", "expires",
}

// ModelURLKey is the URL by which a model fetched from raw is known
// outside the worker: in the heartbeat, in events, errors and logs. It
// drops the user information, the fragment and every query parameter that
// may carry a secret (tokens, signatures of presigned S3, GCS and Azure
// URLs: X-Amz-*, X-Goog-*, sig, …), keeps the others (a CivitAI
// "type=Model&format=SafeTensor" tells files apart), sorts them, and
// lowercases the scheme and host. Two presigned URLs of one object give
// one key. A raw that does not parse gives "(invalid URL)".
func ModelURLKey(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "(invalid URL)"
	}
	u.User = nil
	u.Fragment, u.RawFragment = "", ""
	u.Scheme = strings.ToLower(u.Scheme)
	u.Host = strings.ToLower(u.Host)
	q := u.Query()
	for name := range q {
		l := strings.ToLower(name)
		if strings.HasPrefix(l, "x-amz-") || strings.HasPrefix(l, "x-goog-") {
			q.Del(name)
			continue
		}
		for _, s := range secretParams {
			if l == s {
				q.Del(name)
				break
			}
		}
	}
	u.RawQuery = q.Encode() // sorted by name
	u.ForceQuery = false
	return u.String()
}
