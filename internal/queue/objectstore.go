package queue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/comfyfleet/comfyfleet/internal/blob"

	"github.com/comfyfleet/comfyfleet/proto"
)

// ObjectStore is a blob.Store in a JetStream object store bucket: the
// fleet's blob store when it has no S3. It translates JetStream's errors
// into blob's.
type ObjectStore struct {
	os jetstream.ObjectStore
}

var _ blob.Store = (*ObjectStore)(nil)

// ObjectStoreConfig configures the bucket.
type ObjectStoreConfig struct {
	// Bucket name; "" means proto.BlobBucket.
	Bucket string
	// TTL of every blob; 0 means blob.DefaultTTL.
	TTL time.Duration
	// Replicas; 0 means 1.
	Replicas int
	// MemoryStorage keeps blobs in memory (benchmarks).
	MemoryStorage bool
}

// OpenObjectStore creates the bucket if needed and opens it.
func OpenObjectStore(ctx context.Context, js jetstream.JetStream, cfg ObjectStoreConfig) (*ObjectStore, error) {
	if cfg.Bucket == "" {
		cfg.Bucket = proto.BlobBucket
	}
	if cfg.TTL == 0 {
		cfg.TTL = blob.DefaultTTL
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	storage := jetstream.FileStorage
	if cfg.MemoryStorage {
		storage = jetstream.MemoryStorage
	}
	osc := jetstream.ObjectStoreConfig{
		Bucket:      cfg.Bucket,
		Description: "comfyfleet inputs and outputs",
		TTL:         cfg.TTL,
		Storage:     storage,
		Replicas:    cfg.Replicas,
	}
	// Create is a no-op when the bucket has these settings; only a bucket
	// with other settings is updated.
	os, err := js.CreateObjectStore(ctx, osc)
	if errors.Is(err, jetstream.ErrBucketExists) {
		os, err = js.UpdateObjectStore(ctx, osc)
	}
	if err != nil {
		return nil, fmt.Errorf("open object store %s: %w", cfg.Bucket, err)
	}
	return &ObjectStore{os: os}, nil
}

// AttachObjectStore opens an existing bucket ("" means proto.BlobBucket)
// without creating or reconfiguring it.
func AttachObjectStore(ctx context.Context, js jetstream.JetStream, bucket string) (*ObjectStore, error) {
	if bucket == "" {
		bucket = proto.BlobBucket
	}
	os, err := js.ObjectStore(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("attach object store %s (is the fleet running?): %w", bucket, err)
	}
	return &ObjectStore{os: os}, nil
}

// Put streams r into the bucket in chunks; memory stays flat whatever the size.
//
// The chunks are published asynchronously. nats.go bounds each one's
// acknowledgement only when ctx has no deadline, and otherwise waits for
// them until ctx ends: a chunk whose acknowledgement a NATS restart lost
// held a job's upload until its execution timeout. So the put runs under
// a context that ends with ctx but has no deadline of its own, and a lost
// acknowledgement fails the put after JetStream's default timeout, which
// the caller retries.
func (s *ObjectStore) Put(ctx context.Context, key, mime string, r io.Reader) (blob.Info, error) {
	meta := jetstream.ObjectMeta{Name: key}
	if mime != "" {
		meta.Headers = map[string][]string{"Content-Type": {mime}}
	}
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	defer context.AfterFunc(ctx, cancel)()
	info, err := s.os.Put(pctx, meta, r)
	if err != nil {
		return blob.Info{}, fmt.Errorf("put blob %s: %w", key, err)
	}
	return blob.Info{Key: key, Size: int64(info.Size), Mime: mime}, nil
}

// Get opens a blob for reading.
func (s *ObjectStore) Get(ctx context.Context, key string) (io.ReadCloser, blob.Info, error) {
	res, err := s.os.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrObjectNotFound):
		return nil, blob.Info{}, fmt.Errorf("get blob %s: %w", key, blob.ErrNotFound)
	case errors.Is(err, jetstream.ErrBucketNotFound), errors.Is(err, jetstream.ErrStreamNotFound):
		return nil, blob.Info{}, fmt.Errorf("get blob %s: %w", key, blob.ErrNoBucket)
	}
	if err != nil {
		return nil, blob.Info{}, fmt.Errorf("get blob %s: %w", key, err)
	}
	oi, err := res.Info()
	if err != nil {
		res.Close()
		return nil, blob.Info{}, fmt.Errorf("get blob %s: %w", key, err)
	}
	info := blob.Info{Key: key, Size: int64(oi.Size)}
	if h := oi.Headers; h != nil {
		info.Mime = h.Get("Content-Type")
	}
	return res, info, nil
}

// Delete removes a blob.
func (s *ObjectStore) Delete(ctx context.Context, key string) error {
	err := s.os.Delete(ctx, key)
	if err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("delete blob %s: %w", key, err)
	}
	return nil
}
