// Package blob stores the bytes that must not ride inside NATS messages or
// Redis records: input files and job outputs. The default store is a
// JetStream object store (proto.BlobBucket) with a TTL, so the fleet needs
// nothing beyond NATS; the S3 store of the s3 subpackage (any S3-compatible
// service) implements the same Store interface. Each store translates its
// backend's errors into ErrNotFound, ErrNoBucket and ErrDenied.
package blob
