// Package s3 is the blob.Store of any S3-compatible service (AWS S3,
// Cloudflare R2, GCS interoperability, MinIO, versitygw, …), through
// aws-sdk-go-v2. Uploads stream: a body of unknown length goes up as a
// multipart upload in fixed-size parts, a few in parallel, so memory stays
// bounded by PartSize × (Concurrency + 1) whatever the file's size. URL
// hands out a presigned GET (7 days by default) or a public URL.
//
// AWS's error types stay inside this package: a missing key is
// blob.ErrNotFound, a missing bucket blob.ErrNoBucket, refused credentials
// blob.ErrDenied.
//
// Checksums are computed only when an operation requires them: the SDK's
// newer default (a CRC32 on every upload) breaks several S3-compatible
// services, the Go counterpart of worker-comfyui#156.
package s3
