package proto

import (
	"errors"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Bounds of the numbers of the job contract. [DecodeJob] refuses a value
// outside them and names the field, so that no duration ever overflows
// time.Duration arithmetic and no count wraps where it is used.
//
// policy.executionTimeout and policy.ttl take RunPod's own maximum of 7
// days (reference: runpod-protocol.md §C.3). RunPod's minimums (5 s and
// 10 s) are enforced on the RunPod API ([RunPodMinExecutionTimeout],
// [RunPodMinTTL]); the NATS contract takes any positive value up to the
// maximum, so internal producers (and tests) may ask for shorter ones.
// Where RunPod says nothing the bounds below are the fleet's own.
const (
	// MaxExecutionTimeout bounds policy.executionTimeout, in milliseconds:
	// RunPod's 7 days.
	MaxExecutionTimeout int64 = 7 * 24 * 3600 * 1000
	// MaxTTL bounds policy.ttl, in milliseconds: RunPod's 7 days.
	MaxTTL int64 = 7 * 24 * 3600 * 1000
	// RunPodMinExecutionTimeout and RunPodMinTTL are RunPod's smallest
	// policy values (5 s and 10 s, in milliseconds), which the RunPod API
	// enforces. 0 always means the default.
	RunPodMinExecutionTimeout int64 = 5 * 1000
	RunPodMinTTL              int64 = 10 * 1000
	// MaxRetention bounds retention_ms: a finished job's record is kept at
	// most 30 days. RunPod keeps results 30 minutes (/run) or 1 minute
	// (/runsync) and has no setting for longer.
	MaxRetention int64 = 30 * 24 * 3600 * 1000
	// MaxIndex bounds index, a batch item's position: 2^31−1, so that it
	// fits the integers of every producer's language.
	MaxIndex = math.MaxInt32
	// MaxWebhookLen bounds the length of a webhook URL, in bytes.
	MaxWebhookLen = 2048
	// MaxClockSkew is how far in the future a submitted_at may lie (the
	// producer's clock ahead of the dispatcher's); later ones are refused
	// ([CheckSubmittedAt]).
	MaxClockSkew = 5 * time.Minute
)

// MinSubmittedAt is the earliest submitted_at accepted: 2000-01-01 UTC.
// Earlier times are a producer's bug (a zero or a seconds-for-milliseconds
// mix-up), and before 1970 they are negative Unix times.
var MinSubmittedAt = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// Millis turns a contract duration in milliseconds into a time.Duration
// that never overflows: 0 for a negative value, the longest Duration for
// one beyond it (about 292 years). Every conversion of a contract field
// goes through it, so a value that slipped past the bounds still cannot
// wrap around to a short or negative duration.
func Millis(ms int64) time.Duration {
	switch {
	case ms <= 0:
		return 0
	case ms > math.MaxInt64/int64(time.Millisecond):
		return math.MaxInt64
	}
	return time.Duration(ms) * time.Millisecond
}

// ValidPolicy reports why p is outside the contract's bounds, naming the
// field ("policy.ttl: …"), or nil.
func ValidPolicy(p Policy) error {
	if err := validMillis(p.ExecutionTimeout, MaxExecutionTimeout); err != nil {
		return errorf("policy.executionTimeout: %v", err)
	}
	if err := validMillis(p.TTL, MaxTTL); err != nil {
		return errorf("policy.ttl: %v", err)
	}
	return nil
}

// ValidRetention reports why ms cannot be a retention_ms, or nil.
func ValidRetention(ms int64) error {
	if err := validMillis(ms, MaxRetention); err != nil {
		return errorf("retention_ms: %v", err)
	}
	return nil
}

func validMillis(ms, hi int64) error {
	switch {
	case ms < 0:
		return errorf("%d is negative", ms)
	case ms > hi:
		return errorf("%d ms is more than the limit of %d ms (%s)", ms, hi, humanMillis(hi))
	}
	return nil
}

// humanMillis writes a bound as people say it: "7 days", "30 days".
func humanMillis(ms int64) string {
	d := Millis(ms)
	if d%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + " days"
	}
	return d.String()
}

// CheckSubmittedAt reports why a submission's submitted_at cannot be
// taken when it is read at now: more than [MaxClockSkew] in the future.
// (Earlier than [MinSubmittedAt] is refused by [DecodeJob] already.) The
// dispatcher checks it at intake; a job message already admitted is never
// refused for it, whatever the reader's clock says.
func CheckSubmittedAt(t, now time.Time) error {
	if t.IsZero() {
		return nil
	}
	if ahead := t.Sub(now); ahead > MaxClockSkew {
		return errorf("field submitted_at: %s is %s in the future, more than the allowed clock skew of %s",
			t.UTC().Format(time.RFC3339), ahead.Round(time.Second), MaxClockSkew)
	}
	return nil
}

// ValidWebhook reports why s cannot be a webhook URL, or nil: it must be
// an http or https URL with a host, without user:password@, at most
// [MaxWebhookLen] bytes. The message never repeats the URL, which may carry
// a token. Where the webhook may connect is the deliverer's SSRF guard's
// to judge; this is the check that needs no network.
func ValidWebhook(s string) error {
	if len(s) > MaxWebhookLen {
		return errorf("is %d bytes long, the limit is %d", len(s), MaxWebhookLen)
	}
	u, err := url.Parse(s)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return errorf("is not a URL: %v", err)
	}
	switch {
	case u.Scheme == "":
		return errorf("has no scheme; give an http or https URL")
	case u.Scheme != "http" && u.Scheme != "https":
		return errorf("has the scheme %q; give an http or https URL", Shorten(u.Scheme))
	case u.User != nil:
		return errorf("carries credentials (user:password@); use a token in the path or query, or the webhook signature")
	case u.Hostname() == "":
		return errorf("has no host")
	}
	return nil
}

// badNameRune reports the runes no file name or key prefix may hold:
// control characters (C0, DEL, C1) and Unicode format characters
// (category Cf: the bidirectional overrides and isolates U+202A–U+202E and
// U+2066–U+2069, the marks U+200E and U+200F, zero-width characters, soft
// hyphens), which are invisible or make a name read as another one.
func badNameRune(r rune) bool { return unicode.IsControl(r) || unicode.Is(unicode.Cf, r) }

// findBadNameRune returns the byte offset and the rune of the first rune
// of s that [badNameRune] refuses, or -1.
func findBadNameRune(s string) (int, rune) {
	i := strings.IndexFunc(s, badNameRune)
	if i < 0 {
		return -1, 0
	}
	r, _ := utf8.DecodeRuneInString(s[i:])
	return i, r
}

// maxEcho bounds how much of a caller's value an error message repeats.
const maxEcho = 64

// Shorten cuts s to at most 64 bytes (at a rune boundary) with "…" after,
// for repeating a caller's value in a message without repeating all of it.
func Shorten(s string) string {
	if len(s) <= maxEcho {
		return s
	}
	cut := maxEcho
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
