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
//  2. Publish a JSON [Job] on "cf.submit.<source>" (source "batch" for batch
//     producers, see [SubmitSubject]) with the header "Nats-Msg-Id: <id>",
//     through JetStream so you get a PubAck. The PubAck is the durable
//     receipt: from then on the job reaches a terminal state.
//  3. Watch "cf.events.<id>" ([EventSubject]) for [Event]s, or read the status
//     record, a Redis hash at "cf:job:<id>" ([JobKey]) whose fields are those of
//     [Record].
//
// The smallest message is
//
//	{"v": 1, "id": "my-job-1", "input": {"workflow": { ...ComfyUI API format... }}}
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
// workflow through a float type on the producer side either.
//
// A message that cannot be decoded, or whose input is invalid, never
// disappears: its status becomes FAILED with the reason in "error", and a
// status event is published. A message without a usable id is republished on
// [RejectSubject] with the reason in the "Cf-Reject-Reason" header.
package proto
