package proto

import (
	"bytes"
	"encoding/json"
	"net/url"
	"regexp"
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
	// Headers, when set, are sent with the download to the URL's own host
	// only (never on a redirect to another host): a private file's
	// credentials. A loader input naming the same URL (by [ModelURLKey])
	// is fetched with them too. Secret: never in Redis, events, logs or
	// answers, and dropped from dead letters ([StripSecrets]).
	Headers map[string]string `json:"headers,omitempty"`
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

// Limits of input.models.
const (
	maxModelRefs    = 64
	maxModelHeaders = 16
	maxHeaderLen    = 8192
)

var (
	modelFolderRe = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$`)
	hexSHA256Re   = regexp.MustCompile(`^[0-9a-fA-F]{64}$`)
	headerNameRe  = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
)

// reservedHeaders are the headers of a download the worker sets itself.
var reservedHeaders = []string{"host", "range", "if-range", "content-length", "transfer-encoding", "connection",
	"te", "upgrade", "user-agent", "accept-encoding"}

// decodeModels reads and checks input.models. Errors name the entry and
// the field, never a header's value.
func decodeModels(raw json.RawMessage) ([]ModelRef, error) {
	var list []map[string]json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, errorf(`'models' must be a list of objects such as {"url": "https://…", "folder": "loras"}, got %s`, JSONKind(raw))
	}
	if len(list) > maxModelRefs {
		return nil, errorf("'models' has %d entries, the limit is %d", len(list), maxModelRefs)
	}
	out := make([]ModelRef, 0, len(list))
	for i, el := range list {
		if el == nil {
			return nil, errorf("models[%d] must be an object with url and folder", i)
		}
		var m ModelRef
		str := func(name string, dst *string) error {
			v, ok := el[name]
			if !ok || bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
				return nil
			}
			if err := json.Unmarshal(v, dst); err != nil {
				return errorf("models[%d].%s must be a string, got %s", i, name, JSONKind(v))
			}
			return nil
		}
		for name := range el {
			switch name {
			case "url", "folder", "name", "sha256", "headers":
			default:
				return nil, errorf("models[%d]: unknown field %q (url, folder, name, sha256, headers)", i, name)
			}
		}
		for _, f := range []struct {
			name string
			dst  *string
		}{{"url", &m.URL}, {"folder", &m.Folder}, {"name", &m.Name}, {"sha256", &m.SHA256}} {
			if err := str(f.name, f.dst); err != nil {
				return nil, err
			}
		}
		u, err := url.Parse(m.URL)
		switch {
		case m.URL == "":
			return nil, errorf("models[%d].url is missing", i)
		case err != nil || u.Host == "" || !IsModelURL(m.URL):
			return nil, errorf("models[%d].url must be an https:// URL", i)
		case m.Folder == "":
			return nil, errorf("models[%d].folder is missing: name the ComfyUI model folder (loras, checkpoints, vae, …)", i)
		case !modelFolderRe.MatchString(m.Folder):
			return nil, errorf("models[%d].folder %q is not a model folder's name (a plain name such as loras or checkpoints)", i, m.Folder)
		case m.SHA256 != "" && !hexSHA256Re.MatchString(m.SHA256):
			return nil, errorf("models[%d].sha256 must be 64 hex digits", i)
		}
		if m.Name != "" {
			if err := validImageName(m.Name); err != nil {
				return nil, errorf("models[%d].name: %v", i, err)
			}
			if m.Name[0] == '.' {
				return nil, errorf("models[%d].name %q would be a hidden file", i, m.Name)
			}
		}
		if h, ok := el["headers"]; ok && !bytes.Equal(bytes.TrimSpace(h), []byte("null")) {
			if err := json.Unmarshal(h, &m.Headers); err != nil {
				return nil, errorf("models[%d].headers must be an object of strings", i)
			}
			if len(m.Headers) > maxModelHeaders {
				return nil, errorf("models[%d].headers has %d headers, the limit is %d", i, len(m.Headers), maxModelHeaders)
			}
			for n, v := range m.Headers {
				switch {
				case !headerNameRe.MatchString(n):
					return nil, errorf("models[%d].headers: %q is not a header name", i, n)
				case containsFold(reservedHeaders, n):
					return nil, errorf("models[%d].headers: %s is set by the worker", i, n)
				case len(v) > maxHeaderLen || strings.ContainsAny(v, "\r\n\x00"):
					return nil, errorf("models[%d].headers: the value of %s is longer than %d bytes or holds a line break", i, n, maxHeaderLen)
				}
			}
		}
		out = append(out, m)
	}
	return out, nil
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}
