// Package ssrf guards every outgoing HTTP request whose URL comes from
// outside the fleet: input images by URL, webhooks, the endpoints of
// per-request S3 configs (s3Config), the CLI's downloads of s3_url
// outputs, and models by URL (internal/modelcache). Each use builds one
// Guard from a Config (its allow list, whether http is accepted, whether
// redirects are followed) and makes every request with the guard's
// Client; no caller dials on its own.
//
// The guard checks the scheme of every request, the first and each
// redirect hop, and the address of every connection at connect time, after
// DNS, never through a proxy: loopback, private, link-local (cloud
// metadata), multicast and other special addresses are refused unless an
// allow-list entry names them on the port dialled ("127.0.0.1:9000",
// "10.0.0.0/8:*"; an entry without a port allows only the scheme's default
// port). Hosts written as numbers in any inet_aton form ("2130706433",
// "0x7f.1", "0177.0.0.1") are read as the IPv4 address they denote, judged
// as such and dialled without DNS.
//
// What a remote service says never reaches an error: Describe turns a
// failed request into a fixed text, Status an answer's status into Go's
// reason phrase, and Redact drops a URL's query and user info.
package ssrf
