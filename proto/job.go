package proto

import (
	"encoding/json"
	"errors"
	"fmt"
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
	case strings.ContainsFunc(p, func(r rune) bool { return r == '\\' || r < 0x20 || r == 0x7f }):
		return errorf("%q contains a backslash or a control character", p)
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

// String hides the secret so an S3Config never reaches a log by accident.
func (c S3Config) String() string {
	return fmt.Sprintf("s3://%s@%s/%s", c.BucketName, c.EndpointURL, c.ObjectPath)
}

// DecodeJob decodes and checks a Job message. Errors are *InputError and say
// which field is wrong. The input itself is checked by [DecodeInput].
func DecodeJob(data []byte) (*Job, error) {
	var j Job
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, errorf("decode job message: %s", DescribeJSONError(err))
	}
	if j.V > Version {
		return &j, errorf("job message version %d is newer than this server's %d", j.V, Version)
	}
	if err := ValidID(j.ID); err != nil {
		return &j, errorf("field id: %v", err)
	}
	if j.Pool != "" {
		if err := ValidID(j.Pool); err != nil {
			return &j, errorf("field pool: %v", err)
		}
	}
	if j.Tenant != "" {
		if err := ValidID(j.Tenant); err != nil {
			return &j, errorf("field tenant: %v", err)
		}
	}
	if j.Lane != "" && !j.Lane.Valid() {
		return &j, errorf("field lane: %q is not a lane; use %q or %q", j.Lane, LaneInteractive, LaneBatch)
	}
	if j.Policy.ExecutionTimeout < 0 {
		return &j, errorf("field policy.executionTimeout: %d is negative", j.Policy.ExecutionTimeout)
	}
	if j.Policy.TTL < 0 {
		return &j, errorf("field policy.ttl: %d is negative", j.Policy.TTL)
	}
	if j.Retention < 0 {
		return &j, errorf("field retention_ms: %d is negative", j.Retention)
	}
	if j.BatchID != "" {
		if err := ValidID(j.BatchID); err != nil {
			return &j, errorf("field batch_id: %v", err)
		}
	}
	if j.Index != nil && *j.Index < 0 {
		return &j, errorf("field index: %d is negative", *j.Index)
	}
	if j.Output != nil {
		if err := validS3Prefix(j.Output.S3Prefix); err != nil {
			return &j, errorf("field output.s3_prefix: %v", err)
		}
	}
	return &j, nil
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
