package s3

import (
	"errors"
	"net/url"
	"strings"

	"github.com/comfyfleet/comfyfleet/internal/ssrf"
	"github.com/comfyfleet/comfyfleet/proto"
)

// WithPrefix returns a store on the same bucket, with the same settings,
// whose keys start with prefix instead (a job's output.s3_prefix).
func (s *Store) WithPrefix(prefix string) (*Store, error) {
	cfg := s.given
	cfg.Prefix = prefix
	return New(cfg)
}

// ForRequest builds the store of a request's s3Config (RunPod's): its
// endpoint, credentials, bucket and objectPath, or prefix instead of the
// objectPath when prefix is not empty. The endpoint is the request
// author's, so the store reaches it only through guard (required): the
// endpoint is checked at once (scheme, and an address host), every
// connection when it is made, and its errors never carry the endpoint's
// text. It borrows base's tuning (URL expiry, part size, concurrency,
// attempts; never its HTTP client), and base's region and addressing
// style when the endpoint is base's own. base may be nil.
func ForRequest(base *Store, c *proto.S3Config, prefix string, guard *ssrf.Guard) (*Store, error) {
	if guard == nil {
		return nil, errors.New("s3 config: a request's store needs an SSRF guard")
	}
	cfg := Config{
		Endpoint: c.EndpointURL, AccessKeyID: c.AccessID, SecretAccessKey: c.AccessSecret,
		Bucket: c.BucketName, Prefix: c.ObjectPath, HTTPClient: guard.Client(), guarded: true,
	}
	if prefix != "" {
		cfg.Prefix = prefix
	}
	if u, err := url.Parse(c.EndpointURL); err == nil && c.EndpointURL != "" {
		if err := guard.Check(u); err != nil {
			return nil, err
		}
	}
	if base != nil {
		b := base.given
		cfg.URLExpiry, cfg.PartSize, cfg.Concurrency, cfg.MaxAttempts = b.URLExpiry, b.PartSize, b.Concurrency, b.MaxAttempts
		if strings.TrimRight(c.EndpointURL, "/") == strings.TrimRight(b.Endpoint, "/") {
			cfg.Region, cfg.Addressing = b.Region, b.Addressing
		}
	}
	return New(cfg)
}
