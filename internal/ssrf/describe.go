package ssrf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
)

// Describe says in a fixed text why a request through a guard failed, for
// a job's error, a log or an answer. A *Refusal keeps its own text; every
// other failure is named by its class ("timed out", "connection refused",
// "TLS handshake failed", …), because the errors of Go's HTTP client can
// carry what the remote side sent: a malformed answer's first bytes, a
// certificate's names, the URL with its query.
func Describe(err error) string {
	var r *Refusal
	var dnsErr *net.DNSError
	var certErr *tls.CertificateVerificationError
	var hostErr x509.HostnameError
	var authErr x509.UnknownAuthorityError
	var invalidErr x509.CertificateInvalidError
	var recordErr tls.RecordHeaderError
	var alert tls.AlertError
	var netErr net.Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &r):
		return r.Error()
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timed out"
	case errors.As(err, &dnsErr):
		if dnsErr.IsNotFound {
			return "host not found"
		}
		return "could not resolve the host"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "host unreachable"
	case errors.As(err, &certErr), errors.As(err, &hostErr), errors.As(err, &authErr), errors.As(err, &invalidErr):
		return "TLS certificate not valid for the host"
	case errors.As(err, &recordErr), errors.As(err, &alert):
		return "TLS handshake failed"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed by the server"
	}
	return "request failed"
}

// WithoutAddresses is err with AddressFree's text: the cause stays
// reachable with errors.Is and errors.As. For the errors of a system of
// the fleet's own (ComfyUI, the operator's S3 store), whose text may reach
// a job's submitter, who has no business knowing where they listen.
func WithoutAddresses(err error) error {
	if err == nil {
		return nil
	}
	return addressless{err}
}

type addressless struct{ err error }

func (e addressless) Error() string { return AddressFree(e.err) }
func (e addressless) Unwrap() error { return e.err }

// AddressFree describes a failed request without the host names,
// addresses and URLs Go's errors carry: `Post "http://10.0.0.7:8188/prompt":
// dial tcp 10.0.0.7:8188: connect: connection refused` becomes `dial:
// connect: connection refused`. Unlike Describe it keeps the rest of the
// text, for errors of servers the operator runs.
func AddressFree(err error) string {
	var dnsErr *net.DNSError
	var opErr *net.OpError
	var urlErr *url.Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &dnsErr):
		if dnsErr.IsNotFound {
			return "lookup: host not found"
		}
		if dnsErr.IsTimeout {
			return "lookup: timed out"
		}
		return "lookup: could not resolve the host"
	case errors.As(err, &opErr) && opErr.Err != nil:
		return opErr.Op + ": " + opErr.Err.Error()
	case errors.As(err, &urlErr) && urlErr.Err != nil:
		return urlErr.Err.Error()
	}
	return err.Error()
}

// Status says in a fixed text what an answer's status was: "HTTP 404 Not
// Found". The reason phrase is Go's, never the one the server sent.
func Status(code int) string {
	s := "HTTP " + strconv.Itoa(code)
	if t := http.StatusText(code); t != "" {
		s += " " + t
	}
	return s
}
