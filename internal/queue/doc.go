// Package queue is comfyfleet's adapter to NATS JetStream: every stream,
// consumer, bucket and subject the fleet uses is created, published to and
// read here, under the names of proto, and nats.go's types stay inside.
//
//   - the work queues (queue.go, consumer.go, lanes.go): submissions on
//     CF_SUBMIT, admitted jobs on CF_JOBS by pool and lane, durable pull
//     consumers behind a small Message type, lane priority, and the ack
//     protocol by ack subject, so any process can settle a delivery;
//   - the events (events.go): CF_EVENTS by job and class (status, final,
//     progress), CF_PREVIEWS, core subscriptions, the event log read in
//     place, and the final-event feed that webhooks are delivered from;
//   - the dead letters (deadletters.go, CF_DLQ);
//   - what the streams hold (streams.go): depths, lanes, waiting jobs;
//   - the object store (objectstore.go, the blob store of a fleet without
//     S3) and the request bucket (requests.go, kept for /retry).
//
// Cancels fan out on a core subject (cf.ctl.cancel).
package queue
