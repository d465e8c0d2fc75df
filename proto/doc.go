// Package proto is comfyfleet's wire contract: the messages that travel on
// NATS, the status record kept in Redis, the events a job emits, and the names
// of every stream, subject, bucket and key. It imports nothing from internal/
// and holds types and their encoding only.
//
// # Submitting a job from any language
//
// A producer needs a NATS client with JetStream (nats-py, nats.go, nats.js):
//
//  1. Pick a job id: 1–128 characters of [A-Za-z0-9_-] (a UUID is fine). The
//     id names the job everywhere; submitting the same id twice is a no-op.
//     A batch producer derives it from the batch and the item, so that a
//     re-run of the producer re-submits the same ids and JetStream drops them.
//  2. Publish a JSON [Job] on "cf.submit.<source>" (source "batch" for batch
//     producers, see [SubmitSubject]), or "cf.submit.<source>.<tenant>" on a
//     fleet with tenants, with the header "Nats-Msg-Id: <id>"
//     ([MsgIDHeader]), through JetStream so you get a PubAck. The PubAck is
//     the durable receipt: from then on the job reaches a terminal state,
//     whatever process dies. A PubAck with "duplicate": true means that id was
//     published within the de-duplication window (2 minutes) and this copy
//     was dropped.
//  3. Watch "cf.events.<id>.>" ([JobEventSubjects]) for [Event]s, or read the status
//     record, a Redis hash at "cf:job:<id>" ([JobKey]) whose fields are those of
//     [Record].
//
// The smallest message is
//
//	{"v": 1, "id": "my-job-1", "input": {"workflow": { ...ComfyUI API format... }}}
//
// and a batch item adds where it belongs and how it runs:
//
//	{"v": 1, "id": "sweep-7-0042", "batch_id": "sweep-7", "index": 41,
//	 "lane": "batch", "pool": "default", "webhook": "https://example.com/hook",
//	 "policy": {"executionTimeout": 600000, "ttl": 86400000},
//	 "output": {"s3_prefix": "sweeps/7"}, "retention_ms": 86400000,
//	 "input": {"workflow": {...}, "images": [{"name": "in.png", "image": "<base64>"}]}}
//
// In Python with nats-py:
//
//	js = nc.jetstream()
//	ack = await js.publish("cf.submit.batch", json.dumps(job).encode(),
//	                       headers={"Nats-Msg-Id": job["id"]})
//
// "input" is RunPod's input object exactly as worker-comfyui accepts it (see
// [Input]). Numbers in the workflow are carried as written: a seed of
// 18446744073709551615 reaches ComfyUI unchanged, so never round-trip the
// workflow through a float type on the producer side either. Messages are at
// most 1 MB (NATS's default max_payload): put large input files in the blob
// store ([BlobBucket]) and send their keys as images[].blob. A message that
// fits but no longer does once admission adds its placement fails with its
// size and the limit.
//
// Jobs from cf.submit.batch go to the batch lane unless "lane" says
// "interactive"; workers take every waiting interactive job (the RunPod API's)
// before a batch job, so batch traffic never delays it by more than the batch
// job a worker is running.
//
// [JobSchema] (proto/schema.json) is the message's JSON Schema, for
// validating before sending; a test keeps it in step with the Go types.
//
// # Events and results
//
// Every status transition is published as an [Event] with type "status":
// IN_QUEUE when the dispatcher admits the job and IN_PROGRESS when a worker
// starts it on "cf.events.<id>.status.<tenant>", then one of COMPLETED,
// FAILED, TIMED_OUT or CANCELLED ("error" says why) on
// "cf.events.<id>.final.<tenant>" ([EventSubject], [Event.Subject]; the
// tenant is [DefaultTenant] for jobs submitted without one). Progress events
// (type "progress") come in between on "cf.events.<id>.progress.<tenant>";
// ignore types and fields you do not know. Subscribe to "cf.events.<id>.>"
// for one job, or to "cf.events.*.final.<tenant>" ([TenantEventSubjects])
// for the ends of every job of a tenant ("cf.events.*.final.*",
// [FinalEventSubjects], for every tenant's). The
// events stream ([EventsStream]) keeps them for a day, so a late subscriber
// can replay them with a JetStream consumer; a core subscription sees only
// new ones, so subscribe before publishing. Preview pictures go to
// "cf.previews.<id>.<tenant>" ([PreviewSubject]) in [PreviewStream].
//
// A submission for an id that already has a status record is dropped and
// changes nothing, whatever the job's state.
//
// The result is the status record's "output" field: an [Output] on success.
// Its files are [OutputItem]s that name a key in the object store
// [BlobBucket] ("blob", when the fleet has no S3) or carry an S3 URL in
// "data" (type "s3_url"); read the bytes from there. The record is kept for
// "retention_ms" after the job ends (30 minutes by default), the blobs for a
// day. The runpod-adapter's GET /status/{id} serves the same result with the
// files inline as base64, for clients without Redis.
//
// # Malformed messages
//
// A message that cannot be decoded, or whose input is invalid, never
// disappears. [DecodeJob] reads the id first and then every other field on
// its own, so any message with a usable id, whatever else is wrong with it
// (a field of the wrong type, a number out of its bounds, a webhook that is
// not http(s), an image name with control or format characters), gets the
// status FAILED with the reason, naming the field, in "error", and a status
// event is published. A message without a usable id is republished on
// [RejectSubject] ("cf.rejects.<tenant>", the submitter's) with the reason in
// the "Cf-Reject-Reason" header, as is one whose id another tenant's job
// holds; subscribe there to catch a producer's bugs. Input images given by
// blob key must lie in the tenant's namespace, [InputBlobPrefix].
//
// # Bounds
//
// Every number of a [Job] has a bound, named in limits.go:
// policy.executionTimeout and policy.ttl up to [MaxExecutionTimeout] and
// [MaxTTL] (RunPod's 7 days), retention_ms up to [MaxRetention] (30 days),
// index up to [MaxIndex], v up to [Version], submitted_at from
// [MinSubmittedAt] to [MaxClockSkew] ahead of the dispatcher's clock; a
// webhook is at most [MaxWebhookLen] bytes. Convert contract milliseconds
// with [Millis], which never overflows.
package proto
