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
	// HoldStream holds admitted jobs that wait for their turn in their
	// lane, one subject per pool, lane and tenant ([HoldSubject]): fair
	// share between tenants. A dispatcher moves them onto the jobs stream
	// in weighted round-robin between tenants, a few ahead of the pool's
	// workers, and within a tenant's concurrency cap. Limits retention: a
	// message leaves when it is released (or purged), never by age.
	HoldStream = "CF_HOLD"
	// PreviewStream keeps the latest preview picture of each running job
	// (one message per subject, a short max age), apart from CF_EVENTS so
	// that large previews never crowd out or hold up status events.
	PreviewStream = "CF_PREVIEWS"
	// BlobBucket is the JetStream object store for inputs and outputs.
	BlobBucket = "cf-blobs"
	// RequestBucket is the JetStream key-value bucket in which the
	// runpod-adapter keeps each accepted job message, by job id, so that
	// /retry can queue the same input again ([Job.KeptForRetry]). A copy
	// holds the job's secrets and lives only as long as the job can be
	// retried: each key has a TTL of its own (the job's policy.ttl, its
	// execution timeout and its retention), and the sweepers remove it
	// once the job's record has outlived its retention ([KeptKey]).
	RequestBucket = "cf-runpod-requests"

	// IntakeConsumer is the dispatchers' shared durable consumer of
	// SubmitStream.
	IntakeConsumer = "dispatcher"
	// WebhookConsumer is the dispatchers' shared durable consumer of the
	// final events ([FinalEventSubjects]) that delivers webhooks.
	WebhookConsumer = "webhooks"

	// CancelSubject is the core-NATS subject on which cancels fan out to
	// workers; the payload is a [Cancel].
	CancelSubject = "cf.ctl.cancel"
	// ControlSubject is the core-NATS subject that tells workers the
	// operator's controls (paused lanes, draining workers; Redis's
	// [PausedKey] and [DrainKey]) changed, so that they read them at once;
	// it has no payload.
	ControlSubject = "cf.ctl.control"

	// MsgIDHeader is JetStream's de-duplication header; set it to the job id.
	MsgIDHeader = "Nats-Msg-Id"
	// RejectReasonHeader explains why a message went to RejectSubject.
	RejectReasonHeader = "Cf-Reject-Reason"
	// DLQReasonHeader carries the last error of a dead letter.
	DLQReasonHeader = "Cf-Dlq-Reason"
	// DLQAttemptsHeader carries every failed attempt's error of a dead
	// letter, a JSON array of strings, oldest first.
	DLQAttemptsHeader = "Cf-Dlq-Attempts"
	// DLQSecretsRemovedHeader names, comma-separated, the secrets that
	// were taken out of a dead letter's job message ([StripSecrets]):
	// [SecretComfyOrgAPIKey], [SecretS3AccessID], [SecretS3AccessSecret].
	// A replay gives them again or runs with the worker's own settings
	// ([Job.RestoreSecrets]).
	DLQSecretsRemovedHeader = "Cf-Dlq-Secrets-Removed"

	submitPrefix   = "cf.submit."
	jobsPrefix     = "cf.jobs."
	holdPrefix     = "cf.hold."
	eventsPrefix   = "cf.events."
	dlqPrefix      = "cf.dlq."
	previewsPrefix = "cf.previews."
	rejectsPrefix  = "cf.rejects."
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

// DefaultTenant owns the jobs submitted without a tenant: on
// "cf.submit.<source>" alone, or through an API that has no keys.
const DefaultTenant = "default"

// A job belongs to the tenant that submitted it. The tenant is the last
// token of the submit subject, "cf.submit.<source>.<tenant>", so that NATS
// permissions, not the message, decide it: a producer's NATS user may
// publish on its own tenant's subject only. Every subject a job's events
// and previews go to ends with its tenant too, so a user may be allowed to
// read its own tenant's alone ([TenantEventSubjects]). Tenants follow the
// rules of [ValidID].

// SubmitSubject is the subject a producer of the given source and tenant
// publishes on, e.g. "cf.submit.batch.acme"; "cf.submit.batch" when
// tenant is "", which means [DefaultTenant].
func SubmitSubject(source, tenant string) string {
	if tenant == "" {
		return submitPrefix + source
	}
	return submitPrefix + source + "." + tenant
}

// SubmitSubjects is the filter of the intake stream: every source, with
// or without a tenant.
const SubmitSubjects = submitPrefix + ">"

// ParseSubmitSubject reads the source and the tenant of a submit subject;
// the tenant is [DefaultTenant] when the subject names none.
func ParseSubmitSubject(subject string) (source, tenant string, err error) {
	rest, ok := strings.CutPrefix(subject, submitPrefix)
	if !ok {
		return "", "", errorf("subject %q is not a submit subject (%s<source>[.<tenant>])", subject, submitPrefix)
	}
	source, tenant, named := strings.Cut(rest, ".")
	if err := ValidID(source); err != nil {
		return "", "", errorf("subject %q: source: %v", subject, err)
	}
	if !named {
		return source, DefaultTenant, nil
	}
	if err := ValidID(tenant); err != nil {
		return "", "", errorf("subject %q: tenant: %v", subject, err)
	}
	return source, tenant, nil
}

// RequestSubject is the subject of a job's kept request in
// [RequestBucket]: "$KV.cf-runpod-requests.<id>", JetStream's subject of a
// key, on which a put may carry a per-key TTL (the Nats-TTL header).
func RequestSubject(jobID string) string { return "$KV." + RequestBucket + "." + jobID }

// JobSubject is the subject of an admitted job in a pool and lane, e.g.
// "cf.jobs.default.interactive".
func JobSubject(pool string, lane Lane) string { return jobsPrefix + pool + "." + string(lane) }

// JobSubjects is the filter of the jobs stream.
const JobSubjects = jobsPrefix + "*.*"

// PoolSubjects matches every lane of one pool.
func PoolSubjects(pool string) string { return jobsPrefix + pool + ".*" }

// HoldSubject is the subject of an admitted job of tenant that waits for
// its turn in a pool's lane, in [HoldStream], e.g.
// "cf.hold.default.batch.acme"; tenant "" means [DefaultTenant].
func HoldSubject(pool string, lane Lane, tenant string) string {
	return holdPrefix + pool + "." + string(lane) + "." + orDefaultTenant(tenant)
}

// HoldSubjects is the filter of the hold stream.
const HoldSubjects = holdPrefix + "*.*.*"

// PoolHoldSubjects matches the held jobs of every lane and tenant of one
// pool.
func PoolHoldSubjects(pool string) string { return holdPrefix + pool + ".*.*" }

// ParseHoldSubject splits "cf.hold.<pool>.<lane>.<tenant>".
func ParseHoldSubject(subject string) (pool string, lane Lane, tenant string, ok bool) {
	parts := strings.Split(subject, ".")
	if len(parts) != 5 || parts[0]+"."+parts[1]+"." != holdPrefix || !Lane(parts[3]).Valid() {
		return "", "", "", false
	}
	for _, p := range []string{parts[2], parts[4]} {
		if ValidID(p) != nil {
			return "", "", "", false
		}
	}
	return parts[2], Lane(parts[3]), parts[4], true
}

// HoldConsumer is the durable consumer of a pool's held jobs
// ([PoolHoldSubjects]) that nobody pulls: its pending count is the number
// of the pool's jobs waiting for their turn, which an autoscaler (KEDA's
// NATS JetStream scaler) reads beside the lane consumers'.
func HoldConsumer(pool string) string { return "held-" + pool }

// Event classes: the last token of an event's subject, so that a consumer
// filters on what it needs instead of reading every event.
const (
	// EventClassStatus: the transitions to IN_QUEUE and IN_PROGRESS.
	EventClassStatus = "status"
	// EventClassFinal: the transition to a terminal status (COMPLETED,
	// FAILED, CANCELLED, TIMED_OUT); webhooks and runsync waiters read
	// these alone.
	EventClassFinal = "final"
	// EventClassProgress: progress, stream chunks and progress updates.
	EventClassProgress = "progress"
)

// EventSubject is the subject of one class of a job's events, e.g.
// "cf.events.<id>.final.<tenant>"; tenant "" means [DefaultTenant].
// [Event.Subject] picks the class of an event.
func EventSubject(jobID, class, tenant string) string {
	return eventsPrefix + jobID + "." + class + "." + orDefaultTenant(tenant)
}

// JobEventSubjects matches every event of one job: "cf.events.<id>.>".
func JobEventSubjects(jobID string) string { return eventsPrefix + jobID + ".>" }

// JobClassSubjects matches one class of one job's events, e.g.
// "cf.events.<id>.final.*".
func JobClassSubjects(jobID, class string) string { return eventsPrefix + jobID + "." + class + ".*" }

// TenantEventSubjects matches one class of the events of every job of a
// tenant, e.g. "cf.events.*.final.acme"; class "*" means every class.
// It is what a producer's NATS user is allowed to subscribe to.
func TenantEventSubjects(tenant, class string) string {
	return eventsPrefix + "*." + class + "." + tenant
}

// EventSubjects is the filter of the events stream: every event of every job.
const EventSubjects = eventsPrefix + "*.*.*"

// FinalEventSubjects matches the final event of every job.
const FinalEventSubjects = eventsPrefix + "*." + EventClassFinal + ".*"

// StatusEventSubjects matches every status transition of every job (the
// classes status and final), for a watcher of many jobs that needs no
// progress.
var StatusEventSubjects = []string{eventsPrefix + "*." + EventClassStatus + ".*", FinalEventSubjects}

// PreviewSubject is where a running job's preview pictures go, in
// [PreviewStream]: "cf.previews.<id>.<tenant>".
func PreviewSubject(jobID, tenant string) string {
	return previewsPrefix + jobID + "." + orDefaultTenant(tenant)
}

// JobPreviewSubjects matches one job's preview subject, whatever its
// tenant: "cf.previews.<id>.*".
func JobPreviewSubjects(jobID string) string { return previewsPrefix + jobID + ".*" }

// PreviewSubjects is the filter of the preview stream.
const PreviewSubjects = previewsPrefix + "*.*"

// RejectSubject receives the submissions of a tenant that carry no usable
// job id, or whose id another tenant's job holds, with the reason in the
// [RejectReasonHeader] header: "cf.rejects.<tenant>".
func RejectSubject(tenant string) string { return rejectsPrefix + orDefaultTenant(tenant) }

// RejectSubjects matches the rejects of every tenant.
const RejectSubjects = rejectsPrefix + "*"

func orDefaultTenant(tenant string) string {
	if tenant == "" {
		return DefaultTenant
	}
	return tenant
}

// DLQSubject is where a pool's dead letters go.
func DLQSubject(pool string) string { return dlqPrefix + pool }

// DLQSubjects is the filter of the dead-letter stream.
const DLQSubjects = dlqPrefix + "*"

// LaneConsumer is the name of the durable consumer every worker of a pool
// shares on one of its lanes (a work-queue stream allows one consumer per
// subject), e.g. "pool-default-interactive".
func LaneConsumer(pool string, lane Lane) string { return "pool-" + pool + "-" + string(lane) }

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
