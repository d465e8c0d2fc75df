package queue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/comfyfleet/comfyfleet/proto"
)

// RequestKeep is how long a kept request lives: RunPod's default job TTL
// (24 h) plus the retention of a /run result (30 min), after which a job
// can no longer be retried.
const RequestKeep = 24*time.Hour + 30*time.Minute

// ErrNotKept: no request is kept under the id.
var ErrNotKept = errors.New("request not kept")

// requestStore keeps job messages in proto.RequestBucket, a key-value
// bucket in NATS rather than Redis, because a message may carry the
// request's s3Config secrets, which never go to Redis; and not in the blob
// store, whose object puts cost far more than one message.
type requestStore struct {
	js jetstream.JetStream

	mu sync.Mutex
	kv jetstream.KeyValue
}

func (s *requestStore) ensure(ctx context.Context, replicas int) error {
	kvc := jetstream.KeyValueConfig{
		Bucket:      proto.RequestBucket,
		Description: "job requests accepted by the runpod-adapter, kept for /retry",
		TTL:         RequestKeep,
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	}
	// Create is a no-op when the bucket has these settings; only a bucket
	// with other settings is updated.
	kv, err := s.js.CreateKeyValue(ctx, kvc)
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = s.js.UpdateKeyValue(ctx, kvc)
	}
	if err != nil {
		return fmt.Errorf("ensure bucket %s: %w", proto.RequestBucket, err)
	}
	s.mu.Lock()
	s.kv = kv
	s.mu.Unlock()
	return nil
}

func (s *requestStore) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.kv != nil {
		return s.kv, nil
	}
	kv, err := s.js.KeyValue(ctx, proto.RequestBucket)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", proto.RequestBucket, err)
	}
	s.kv = kv
	return kv, nil
}

// KeepRequest keeps a job message under its id, for /retry.
func (c *Client) KeepRequest(ctx context.Context, id string, msg []byte) error {
	kv, err := c.requests.bucket(ctx)
	if err != nil {
		return err
	}
	if _, err := kv.Put(ctx, id, msg); err != nil {
		return fmt.Errorf("keep request of %s: %w", id, err)
	}
	return nil
}

// KeptRequest reads a kept job message; ErrNotKept when there is none.
func (c *Client) KeptRequest(ctx context.Context, id string) ([]byte, error) {
	kv, err := c.requests.bucket(ctx)
	if err != nil {
		return nil, err
	}
	e, err := kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, ErrNotKept
	}
	if err != nil {
		return nil, fmt.Errorf("read kept request of %s: %w", id, err)
	}
	return e.Value(), nil
}
