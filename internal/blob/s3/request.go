package s3

import (
	"strings"

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
// objectPath when prefix is not empty. It borrows base's tuning (URL
// expiry, part size, concurrency, attempts, HTTP client), and base's region
// and addressing style when the endpoint is base's own. base may be nil.
func ForRequest(base *Store, c *proto.S3Config, prefix string) (*Store, error) {
	cfg := Config{
		Endpoint: c.EndpointURL, AccessKeyID: c.AccessID, SecretAccessKey: c.AccessSecret,
		Bucket: c.BucketName, Prefix: c.ObjectPath,
	}
	if prefix != "" {
		cfg.Prefix = prefix
	}
	if base != nil {
		b := base.given
		cfg.URLExpiry, cfg.PartSize, cfg.Concurrency, cfg.MaxAttempts, cfg.HTTPClient = b.URLExpiry, b.PartSize, b.Concurrency, b.MaxAttempts, b.HTTPClient
		if strings.TrimRight(c.EndpointURL, "/") == strings.TrimRight(b.Endpoint, "/") {
			cfg.Region, cfg.Addressing = b.Region, b.Addressing
		}
	}
	return New(cfg)
}
