// Package blobtest is the conformance suite every blob.Store passes: the
// NATS object store and the S3 store run the same tests.
package blobtest
