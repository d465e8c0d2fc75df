// Package queue is comfyfleet's adapter to NATS JetStream: it creates the
// streams of the wire contract (proto), publishes submissions, admitted jobs
// and events, and hands out messages from durable pull consumers behind a
// small Message type, so no other package needs to know JetStream's API.
package queue
