package proto

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"reflect"
	"strings"
	"time"
)

// Job is the message on SubmitSubject (as sent by a producer) and on
// JobSubject (as admitted by the dispatcher, with Pool and Lane filled in).
//
// Field names follow RunPod's request body where one exists (input,
// webhook, policy, s3Config); comfyfleet's own fields are snake_case.
type Job struct {
	// V is the contract version, [Version].
	V int `json:"v"`
	// ID names the job; see [ValidID]. Also the Nats-Msg-Id header.
	ID string `json:"id"`
	// Input is RunPod's input object, kept as raw JSON so the workflow's
	// numbers are never reformatted. Decode it with [DecodeInput].
	Input json.RawMessage `json:"input"`
	// Webhook, when set, receives the job's RunPod status body once the job
	// reaches a terminal state.
	Webhook string `json:"webhook,omitempty"`
	// Policy is RunPod's per-job policy.
	Policy Policy `json:"policy,omitzero"`
	// S3Config is RunPod's per-request S3 settings. It is secret: never
	// echoed, logged or written to Redis.
	S3Config *S3Config `json:"s3Config,omitempty"`
	// Pool names the pool of workers; empty means [DefaultPool].
	Pool string `json:"pool,omitempty"`
	// Lane is the lane within the pool; empty means interactive for the api
	// and runpod sources and batch otherwise (lowPriority forces batch).
	Lane Lane `json:"lane,omitempty"`
	// Source is the submit subject's source token; the dispatcher fills
	// it in.
	Source string `json:"source,omitempty"`
	// Tenant owns the job. The dispatcher sets it from the submit subject
	// ([ParseSubmitSubject]), which NATS permissions control; a message
	// that names another tenant than its subject fails admission.
	Tenant string `json:"tenant,omitempty"`
	// BatchID and Index place a batch item in its batch: BatchID follows
	// the rules of [ValidID] and lands in the status record's batch_id;
	// Index is the item's position (0 first), for the producer's own use.
	BatchID string `json:"batch_id,omitempty"`
	Index   *int   `json:"index,omitempty"`
	// Output says where the job's files go; nil means the worker's
	// defaults.
	Output *OutputSettings `json:"output,omitempty"`
	// SubmittedAt is when the job was accepted; zero means "when the
	// dispatcher read it".
	SubmittedAt time.Time `json:"submitted_at,omitzero"`
	// Retention is how long the terminal status is kept, in milliseconds;
	// zero means the fleet's default (30 minutes).
	Retention int64 `json:"retention_ms,omitempty"`
}

// Policy is RunPod's job policy. Durations are milliseconds, as RunPod's.
type Policy struct {
	// ExecutionTimeout bounds the time a job may run once picked up.
	ExecutionTimeout int64 `json:"executionTimeout,omitempty"`
	// TTL bounds the job's whole life from submission.
	TTL int64 `json:"ttl,omitempty"`
	// LowPriority puts the job in the batch lane.
	LowPriority bool `json:"lowPriority,omitempty"`
}

// OutputSettings say where a job's output files go. They hold no secrets:
// credentials come from [S3Config] or the worker's settings.
type OutputSettings struct {
	// S3Prefix replaces the worker's BUCKET_PREFIX for this job when its
	// outputs are uploaded to S3: the object keys become
	// "<s3_prefix>/<job id>/<file name>". It has no effect when outputs go
	// to the blob store. At most 512 bytes, no "..", no leading "/", no
	// backslash or control character.
	S3Prefix string `json:"s3_prefix,omitempty"`
}

// maxS3PrefixLen bounds OutputSettings.S3Prefix.
const maxS3PrefixLen = 512

// validS3Prefix reports why p cannot prefix object keys, or nil.
func validS3Prefix(p string) error {
	switch {
	case len(p) > maxS3PrefixLen:
		return errorf("is %d bytes long, the limit is %d", len(p), maxS3PrefixLen)
	case strings.HasPrefix(p, "/"):
		return errorf("%q starts with '/'; give a relative key prefix", p)
	case strings.ContainsRune(p, '\\'):
		return errorf("%q contains a backslash", Shorten(p))
	}
	if i, r := findBadNameRune(p); i >= 0 {
		return errorf("%q has the control or format character %U at byte %d", Shorten(p), r, i)
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return errorf("%q contains \"..\"", p)
		}
	}
	return nil
}

// S3Config is RunPod's per-request S3 configuration.
type S3Config struct {
	AccessID     string `json:"accessId"`
	AccessSecret string `json:"accessSecret"`
	BucketName   string `json:"bucketName"`
	EndpointURL  string `json:"endpointUrl"`
	ObjectPath   string `json:"objectPath,omitempty"`
}

// String hides the secret, and the endpoint's user info and query, so an
// S3Config never reaches a log by accident.
func (c S3Config) String() string {
	return fmt.Sprintf("s3://%s@%s/%s", c.BucketName, redactURL(c.EndpointURL), c.ObjectPath)
}

// redactURL keeps a URL's scheme, host and path (internal/ssrf's Redact,
// which this leaf package cannot import); text that does not parse is not
// repeated.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(a URL that does not parse)"
	}
	s := (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
	if u.RawQuery != "" || u.ForceQuery {
		s += "?…"
	}
	return s
}

// DecodeJob decodes and checks a Job message. Errors are *InputError and
// name the field and what is wrong with it. The input itself is checked by
// [DecodeInput].
//
// Without a usable id the job is nil. With one, the job comes back with
// any error too, holding at least its ID and, when valid, its BatchID, so
// that the caller can fail the job under its id with the reason instead of
// losing it: a message whose fields do not all have their types is read
// again field by field, the id first, each field on its own, so that the
// id is known whatever else is wrong and the error names the field. Then
// every field is checked against its bounds (limits.go). As encoding/json
// does, field names match exactly or else without regard to case, unknown
// fields are ignored and null means absent.
func DecodeJob(data []byte) (*Job, error) {
	j := &Job{}
	if t := bytes.TrimSpace(data); len(t) == 0 || t[0] != '{' || json.Unmarshal(data, j) != nil {
		// The common case costs one decode; only a malformed message pays
		// for the second, slower one that says where.
		j = &Job{}
		if err := j.decodeFields(data); err != nil {
			if j.ID == "" {
				return nil, err
			}
			return j, err
		}
	}
	if err := ValidID(j.ID); err != nil {
		return nil, errorf("field id: %v", err)
	}
	if j.BatchID != "" {
		if err := ValidID(j.BatchID); err != nil {
			j.BatchID = ""
			return j, errorf("field batch_id: %v", err)
		}
	}
	if err := j.check(); err != nil {
		return j, err
	}
	return j, nil
}

// decodeFields decodes a message that encoding/json cannot decode as a
// whole, field by field, to say which field is wrong. The id comes first:
// an error with j.ID still empty means the message has no usable id.
func (j *Job) decodeFields(data []byte) error {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil {
		return errorf("decode job message: %s", DescribeJSONError(err))
	}
	if fields == nil {
		return errorf("decode job message: got JSON null, want an object")
	}
	var id string
	if err := field(fields, "id", "a string", &id); err != nil {
		return err
	}
	if err := ValidID(id); err != nil {
		return errorf("field id: %v", err)
	}
	j.ID = id
	// The batch next, so that a job failed for another field is still
	// found with its batch.
	if err := field(fields, "batch_id", "a string", &j.BatchID); err != nil {
		j.BatchID = ""
		return err
	}
	if j.BatchID != "" && ValidID(j.BatchID) != nil {
		return nil // DecodeJob says so
	}
	if err := field(fields, "v", "a whole number", &j.V); err != nil {
		return err
	}
	if raw, ok := lookup(fields, "input"); ok {
		j.Input = raw
	}
	if err := field(fields, "webhook", "a string (an http or https URL)", &j.Webhook); err != nil {
		return err
	}
	if raw, ok := lookup(fields, "policy"); ok {
		p, err := decodePolicy(raw)
		if err != nil {
			return err
		}
		j.Policy = p
	}
	if raw, ok := lookup(fields, "s3Config"); ok {
		c, err := decodeS3Config(raw)
		if err != nil {
			return err
		}
		j.S3Config = c
	}
	for _, f := range []struct {
		name string
		dst  any
	}{{"pool", &j.Pool}, {"lane", &j.Lane}, {"source", &j.Source}, {"tenant", &j.Tenant}} {
		if err := field(fields, f.name, "a string", f.dst); err != nil {
			return err
		}
	}
	var index int64
	if err := field(fields, "index", fmt.Sprintf("a whole number from 0 to %d", MaxIndex), &index); err != nil {
		return err
	}
	if _, ok := lookup(fields, "index"); ok {
		n := int(index) // check() bounds it
		j.Index = &n
	}
	if raw, ok := lookup(fields, "output"); ok {
		obj, err := object(raw, "output", "an object with s3_prefix")
		if err != nil {
			return err
		}
		j.Output = &OutputSettings{}
		if err := field(obj, "output.s3_prefix", "a string", &j.Output.S3Prefix); err != nil {
			return err
		}
	}
	if err := field(fields, "submitted_at", "an RFC 3339 time such as 2026-01-02T03:04:05Z", &j.SubmittedAt); err != nil {
		return err
	}
	return field(fields, "retention_ms", fmt.Sprintf("a whole number of milliseconds from 0 to %d", MaxRetention), &j.Retention)
}

// check checks every field but id and batch_id against its bounds.
func (j *Job) check() error {
	switch {
	case j.V < 0:
		return errorf("field v: %d is not a contract version; use %d", j.V, Version)
	case j.V > Version:
		return errorf("job message version %d is newer than this server's %d", j.V, Version)
	}
	if j.Webhook != "" {
		if err := ValidWebhook(j.Webhook); err != nil {
			return errorf("field webhook: %v", err)
		}
	}
	if err := ValidPolicy(j.Policy); err != nil {
		return errorf("field %v", err)
	}
	if j.Pool != "" {
		if err := ValidID(j.Pool); err != nil {
			return errorf("field pool: %v", err)
		}
	}
	if j.Tenant != "" {
		if err := ValidID(j.Tenant); err != nil {
			return errorf("field tenant: %v", err)
		}
	}
	if j.Lane != "" && !j.Lane.Valid() {
		return errorf("field lane: %q is not a lane; use %q or %q", Shorten(string(j.Lane)), LaneInteractive, LaneBatch)
	}
	if j.Source != "" {
		if err := ValidID(j.Source); err != nil {
			return errorf("field source: %v", err)
		}
	}
	if j.Index != nil {
		switch {
		case *j.Index < 0:
			return errorf("field index: %d is negative", *j.Index)
		case *j.Index > MaxIndex:
			return errorf("field index: %d is more than the limit of %d", *j.Index, MaxIndex)
		}
	}
	if j.Output != nil {
		if err := validS3Prefix(j.Output.S3Prefix); err != nil {
			return errorf("field output.s3_prefix: %v", err)
		}
	}
	if !j.SubmittedAt.IsZero() && j.SubmittedAt.Before(MinSubmittedAt) {
		return errorf("field submitted_at: %s is before %s", j.SubmittedAt.UTC().Format(time.RFC3339), MinSubmittedAt.Format(time.RFC3339))
	}
	if err := ValidRetention(j.Retention); err != nil {
		return errorf("field %v", err)
	}
	return nil
}

// decodePolicy decodes a job's policy; check() bounds it.
func decodePolicy(raw json.RawMessage) (Policy, error) {
	var p Policy
	obj, err := object(raw, "policy", "an object with executionTimeout, ttl and lowPriority")
	if err != nil {
		return p, err
	}
	ms := func(hi int64) string {
		return fmt.Sprintf("a whole number of milliseconds from 0 to %d (%s)", hi, humanMillis(hi))
	}
	if err := field(obj, "policy.executionTimeout", ms(MaxExecutionTimeout), &p.ExecutionTimeout); err != nil {
		return p, err
	}
	if err := field(obj, "policy.ttl", ms(MaxTTL), &p.TTL); err != nil {
		return p, err
	}
	if err := field(obj, "policy.lowPriority", "true or false", &p.LowPriority); err != nil {
		return p, err
	}
	return p, nil
}

// decodeS3Config decodes a job's s3Config. Its values are secret: no
// message repeats them.
func decodeS3Config(raw json.RawMessage) (*S3Config, error) {
	obj, err := object(raw, "s3Config", "an object with accessId, accessSecret, bucketName and endpointUrl")
	if err != nil {
		return nil, err
	}
	c := &S3Config{}
	for _, f := range []struct {
		name string
		dst  *string
	}{{"accessId", &c.AccessID}, {"accessSecret", &c.AccessSecret}, {"bucketName", &c.BucketName},
		{"endpointUrl", &c.EndpointURL}, {"objectPath", &c.ObjectPath}} {
		if err := field(obj, "s3Config."+f.name, "a string", f.dst); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// lookup finds a field by its JSON name, exactly or else regardless of
// case (as encoding/json does); absent and null are not found.
func lookup(fields map[string]json.RawMessage, name string) (json.RawMessage, bool) {
	raw, ok := fields[name]
	if !ok {
		for k, v := range fields {
			if strings.EqualFold(k, name) {
				raw, ok = v, true
				break
			}
		}
	}
	if !ok || bytes.Equal(raw, []byte("null")) {
		return nil, false
	}
	return raw, true
}

// field decodes the field at path (its last dotted part is the name in
// fields) into dst, leaving dst as it is when the field is absent or
// null. want says what the field takes, for the message. Only a number
// meant for a number is repeated in it: a string may be a secret.
func field(fields map[string]json.RawMessage, path, want string, dst any) error {
	raw, ok := lookup(fields, path[strings.LastIndexByte(path, '.')+1:])
	if !ok {
		return nil
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		kind := JSONKind(raw)
		switch dst.(type) {
		case *int, *int64:
			if kind == "a number" {
				return errorf("field %s: %s is not %s", path, Shorten(string(raw)), want)
			}
		case *time.Time:
			if kind == "a string" {
				return errorf("field %s: %s is not %s", path, Shorten(string(raw)), want)
			}
		}
		return errorf("field %s: got %s, want %s", path, kind, want)
	}
	return nil
}

// object decodes a field that must be a JSON object.
func object(raw json.RawMessage, path, want string) (map[string]json.RawMessage, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, errorf("field %s: got %s, want %s", path, JSONKind(raw), want)
	}
	return obj, nil
}

// DescribeJSONError turns encoding/json's errors into text that names the
// place: the byte offset of a syntax error, or the field of a type error.
func DescribeJSONError(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("invalid JSON at byte %d: %v", se.Offset, se)
	case errors.As(err, &te):
		want := te.Type.String()
		switch te.Type.Kind() {
		case reflect.Map, reflect.Struct:
			want = "an object"
		case reflect.Slice, reflect.Array:
			want = "an array"
		}
		if te.Field == "" {
			return fmt.Sprintf("got JSON %s, want %s", te.Value, want)
		}
		return fmt.Sprintf("field %s: got JSON %s, want %s", te.Field, te.Value, want)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// Place fills in what the contract derives when a producer leaves it out:
// the pool (defaultPool), the lane (interactive for the api and runpod
// sources, batch otherwise; policy.lowPriority always means batch) and the
// submission time (now).
func (j *Job) Place(defaultPool string, now time.Time) {
	if j.Pool == "" {
		j.Pool = defaultPool
	}
	if j.Lane == "" {
		j.Lane = LaneBatch
		if j.Source == SourceAPI || j.Source == SourceRunPod {
			j.Lane = LaneInteractive
		}
	}
	if j.Policy.LowPriority {
		j.Lane = LaneBatch
	}
	if j.SubmittedAt.IsZero() {
		j.SubmittedAt = now
	}
}

// KeptForRetry reports whether a copy of the job's message is kept in
// [RequestBucket] for RunPod's /retry: the endpoint API's jobs are.
func (j *Job) KeptForRetry() bool { return j.Source == SourceAPI }
