package worker

import (
	"crypto/tls"

	"github.com/comfyfleet/comfyfleet/internal/ssrf"
)

// The worker reaches two kinds of outside URL a job names, each through
// its own guard (internal/ssrf): input URLs, and the endpoint of a job's
// s3Config. The worker's own S3 store (BUCKET_ENDPOINT_URL) is the
// operator's and is not guarded. Refusals name the settings that allow an
// exception (bound in internal/role).

// inputGuard guards input URLs.
func inputGuard(cfg Config, tlsConfig *tls.Config) (*ssrf.Guard, error) {
	return ssrf.New(ssrf.Config{Use: "input URL", Allow: cfg.InputURLAllow, AllowHTTP: cfg.InputURLAllowHTTP,
		AllowSetting: "INPUT_URL_ALLOW", HTTPSetting: "INPUT_URL_ALLOW_HTTP", TLS: tlsConfig})
}

// s3ConfigGuard guards the endpoints of jobs' s3Configs.
func s3ConfigGuard(cfg Config, tlsConfig *tls.Config) (*ssrf.Guard, error) {
	return ssrf.New(ssrf.Config{Use: "s3Config.endpointUrl", Allow: cfg.S3ConfigAllow, AllowHTTP: cfg.S3ConfigAllowHTTP,
		AllowSetting: "S3_CONFIG_ALLOW", HTTPSetting: "S3_CONFIG_ALLOW_HTTP", TLS: tlsConfig})
}
