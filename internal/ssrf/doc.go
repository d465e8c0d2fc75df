// Package ssrf guards outgoing HTTP requests whose URL comes from a job
// (input images by URL, webhooks): the address a connection goes to is
// checked after DNS resolution, at connect time, on every redirect hop and
// never through a proxy, so a URL cannot reach loopback, private,
// link-local (cloud metadata) or other special addresses unless an allow
// list names them.
package ssrf
