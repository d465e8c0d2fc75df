package bench

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/comfyfleet/comfyfleet/internal/blob/s3"
	"github.com/comfyfleet/comfyfleet/internal/blob/s3/s3test"
)

// s3Store is an S3-compatible store the bench started for a stack's
// workers: a versitygw process (found as the tests find it: $VERSITYGW,
// PATH, GOBIN, GOPATH/bin) with one bucket.
type s3Store struct {
	srv    *s3test.Server
	bucket string
}

// benchBucket is the bucket of the bench's store.
const benchBucket = "comfyfleet-bench"

// startS3 starts versitygw and creates the bucket. A missing binary is a
// noS3, whose text says how to install it.
func startS3(ctx context.Context) (*s3Store, error) {
	if _, err := s3test.Binary(); err != nil {
		return nil, noS3{err}
	}
	srv, err := s3test.Start()
	if err != nil {
		return nil, fmt.Errorf("start versitygw: %w", err)
	}
	st, err := s3.New(srv.Config(benchBucket))
	if err == nil {
		err = st.EnsureBucket(ctx)
	}
	if err != nil {
		srv.Stop()
		return nil, fmt.Errorf("create the bench's bucket: %w", err)
	}
	return &s3Store{srv: srv, bucket: benchBucket}, nil
}

// noS3 is a missing versitygw: a variant not run, not a failure.
type noS3 struct{ err error }

func (e noS3) Error() string { return "not run: " + e.err.Error() }

// env is the workers' BUCKET_* settings for the store.
func (s *s3Store) env() map[string]string {
	return map[string]string{
		"BUCKET_ENDPOINT_URL": s.srv.Endpoint, "BUCKET_ACCESS_KEY_ID": s.srv.AccessKey,
		"BUCKET_SECRET_ACCESS_KEY": s.srv.SecretKey, "BUCKET_NAME": s.bucket, "BUCKET_REGION": s.srv.Region,
		"BUCKET_ADDRESSING_STYLE": s3.AddressingPath,
	}
}

// stored is the bytes the store holds in objects of the bucket, read from
// versitygw's posix backend.
func (s *s3Store) stored() (objects int, bytes int64, err error) {
	root := filepath.Join(s.srv.Dir, s.bucket)
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() != "." && d.Name()[0] == '.' && p != root {
				return filepath.SkipDir // versitygw's own (multipart staging)
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		objects++
		bytes += info.Size()
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("read the bucket's objects: %w", err)
	}
	return objects, bytes, nil
}

func (s *s3Store) stop() { s.srv.Stop() }
