// Package s3test runs a real S3-compatible server for tests: a versitygw
// process (posix backend) on a random loopback port with its data in a
// temporary directory. One server serves a whole test package (Lazy);
// tests isolate themselves with their own bucket.
//
// The binary is found on PATH or in $(go env GOPATH)/bin; `make test`
// installs it (scripts/ensure-versitygw.sh). A missing binary fails the
// test: it is never skipped.
package s3test
