// Package blob stores the bytes that must not ride inside NATS messages or
// Redis records: input files and job outputs. The default store is a
// JetStream object store (proto.BlobBucket) with a TTL, so the fleet needs
// nothing beyond NATS; an S3 store can take its place behind the same Store
// interface.
package blob
