package runpod

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// RequestBucket is the JetStream key-value bucket in which the API keeps
// each accepted job message, by job id, so that /retry can queue the same
// input again. It lives in NATS, not in Redis, because the message may
// carry the request's s3Config secrets, which never go to Redis; and not
// in the blob store, whose object puts cost far more than one message.
const RequestBucket = "cf-runpod-requests"

// RequestKeep is how long a kept request lives: RunPod's default job TTL
// (24 h) plus the retention of a /run result (30 min), after which a job
// can no longer be retried.
const RequestKeep = 24*time.Hour + 30*time.Minute

// errNotKept: no request is kept under the id.
var errNotKept = errors.New("request not kept")

// requestStore keeps job messages in RequestBucket, creating the bucket
// on first use.
type requestStore struct {
	js jetstream.JetStream

	mu sync.Mutex
	kv jetstream.KeyValue
}

func (s *requestStore) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.kv != nil {
		return s.kv, nil
	}
	kvc := jetstream.KeyValueConfig{
		Bucket:      RequestBucket,
		Description: "job requests accepted by the runpod-adapter, kept for /retry",
		TTL:         RequestKeep,
		History:     1,
		Storage:     jetstream.FileStorage,
	}
	// Create is a no-op when the bucket has these settings; only a bucket
	// with other settings is updated.
	kv, err := s.js.CreateKeyValue(ctx, kvc)
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = s.js.UpdateKeyValue(ctx, kvc)
	}
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", RequestBucket, err)
	}
	s.kv = kv
	return kv, nil
}

func (s *requestStore) put(ctx context.Context, id string, msg []byte) error {
	kv, err := s.bucket(ctx)
	if err != nil {
		return err
	}
	if _, err := kv.Put(ctx, id, msg); err != nil {
		return fmt.Errorf("keep request of %s: %w", id, err)
	}
	return nil
}

func (s *requestStore) get(ctx context.Context, id string) ([]byte, error) {
	kv, err := s.bucket(ctx)
	if err != nil {
		return nil, err
	}
	e, err := kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, errNotKept
	}
	if err != nil {
		return nil, fmt.Errorf("read kept request of %s: %w", id, err)
	}
	return e.Value(), nil
}
