package modelcache

import "fmt"

// Error is a failed fetch. Its text names the model by its URL with the
// secrets redacted (ssrf.Redact) and says why; it never carries what the
// remote server sent beyond its status.
type Error struct {
	// URL is the redacted URL.
	URL string
	// Reason says why, e.g. "not found (404 Not Found)".
	Reason string
	// Permanent: trying again cannot help (not found, refused, a hash
	// mismatch, over the size cap); otherwise the failure may pass (a
	// server error, a cut connection, a timeout) and a later attempt
	// resumes the download.
	Permanent bool
}

func (e *Error) Error() string { return fmt.Sprintf("model %s: %s", e.URL, e.Reason) }

func permanent(url, format string, args ...any) *Error {
	return &Error{URL: url, Reason: fmt.Sprintf(format, args...), Permanent: true}
}

func transient(url, format string, args ...any) *Error {
	return &Error{URL: url, Reason: fmt.Sprintf(format, args...)}
}
