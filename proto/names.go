package proto

import "strings"

// Version is the version of the wire contract written in the "v" field of
// every message. Decoders accept 0 (absent) as Version.
const Version = 1

// Streams, subjects and buckets.
const (
	// SubmitStream is the intake work-queue stream; it holds SubmitSubjects.
	SubmitStream = "CF_SUBMIT"
	// JobsStream is the admitted-jobs work-queue stream; it holds JobSubjects.
	JobsStream = "CF_JOBS"
	// EventsStream keeps every job's events for a while (limits retention).
	EventsStream = "CF_EVENTS"
	// DLQStream keeps jobs that exhausted their attempts.
	DLQStream = "CF_DLQ"
	// BlobBucket is the JetStream object store for inputs and outputs.
	BlobBucket = "cf-blobs"

	// CancelSubject is the core-NATS subject on which cancels fan out to
	// workers; the payload is a [Cancel].
	CancelSubject = "cf.ctl.cancel"
	// RejectSubject receives submissions that carry no usable job id, with
	// the reason in the RejectReasonHeader header.
	RejectSubject = "cf.rejects"

	// MsgIDHeader is JetStream's de-duplication header; set it to the job id.
	MsgIDHeader = "Nats-Msg-Id"
	// RejectReasonHeader explains why a message went to RejectSubject.
	RejectReasonHeader = "Cf-Reject-Reason"

	submitPrefix = "cf.submit."
	jobsPrefix   = "cf.jobs."
	eventsPrefix = "cf.events."
	dlqPrefix    = "cf.dlq."

	jobKeyPrefix    = "cf:job:"
	workerKeyPrefix = "cf:worker:"
)

// Sources of traffic, the last token of a submit subject.
const (
	SourceAPI    = "api"     // the runpod-adapter's endpoint API
	SourceRunPod = "runpod"  // the runpod-adapter in serverless mode
	SourceBatch  = "batch"   // internal batch producers and the CLI
	DefaultPool  = "default" // the pool of a job that names none
)

// Lane orders work inside a pool: interactive before batch.
type Lane string

// The lanes.
const (
	LaneInteractive Lane = "interactive"
	LaneBatch       Lane = "batch"
)

// Valid reports whether l is a known lane.
func (l Lane) Valid() bool { return l == LaneInteractive || l == LaneBatch }

// SubmitSubject is the subject a producer of the given source publishes on,
// e.g. "cf.submit.batch".
func SubmitSubject(source string) string { return submitPrefix + source }

// SubmitSubjects is the filter of the intake stream.
const SubmitSubjects = submitPrefix + "*"

// JobSubject is the subject of an admitted job in a pool and lane, e.g.
// "cf.jobs.default.interactive".
func JobSubject(pool string, lane Lane) string { return jobsPrefix + pool + "." + string(lane) }

// JobSubjects is the filter of the jobs stream.
const JobSubjects = jobsPrefix + "*.*"

// PoolSubjects matches every lane of one pool.
func PoolSubjects(pool string) string { return jobsPrefix + pool + ".*" }

// EventSubject is where a job's events are published, e.g. "cf.events.<id>".
func EventSubject(jobID string) string { return eventsPrefix + jobID }

// EventSubjects is the filter of the events stream.
const EventSubjects = eventsPrefix + "*"

// DLQSubject is where a pool's dead letters go.
func DLQSubject(pool string) string { return dlqPrefix + pool }

// DLQSubjects is the filter of the dead-letter stream.
const DLQSubjects = dlqPrefix + "*"

// JobKey is the Redis key of a job's status record.
func JobKey(jobID string) string { return jobKeyPrefix + jobID }

// WorkerKey is the Redis key of a worker's heartbeat.
func WorkerKey(workerID string) string { return workerKeyPrefix + workerID }

// maxIDLen bounds ids so that subjects and keys stay small.
const maxIDLen = 128

// ValidID reports why id cannot name a job, pool, source or worker, or nil.
// Ids become NATS subject tokens, so only [A-Za-z0-9_-] are allowed.
func ValidID(id string) error {
	if id == "" {
		return errorf("id is empty")
	}
	if len(id) > maxIDLen {
		return errorf("id is %d characters long, the limit is %d", len(id), maxIDLen)
	}
	if i := strings.IndexFunc(id, func(r rune) bool {
		return !(r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
	}); i >= 0 {
		return errorf("id %q has the character %q at offset %d; only letters, digits, '-' and '_' are allowed", id, id[i], i)
	}
	return nil
}
