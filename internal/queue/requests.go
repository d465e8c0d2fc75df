package queue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comfyfleet/comfyfleet/proto"
)

// RequestKeep is the longest a kept request lives, the bucket's max age:
// RunPod's default job TTL (24 h) plus the retention of a /run result
// (30 min). Each copy has a TTL of its own, at most this (KeepRequest),
// and is removed once its job's record retention ends (DropRequests).
const RequestKeep = 24*time.Hour + 30*time.Minute

// requestMarkerTTL is how long the bucket keeps the marker of a removed
// or expired copy (JetStream's LimitMarkerTTL, which per-key TTLs need):
// a marker holds no data.
const requestMarkerTTL = time.Minute

// dropConcurrency bounds the removals DropRequests has in flight.
const dropConcurrency = 32

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
		// Per-key TTLs: each copy lives as long as its job.
		LimitMarkerTTL: requestMarkerTTL,
	}
	// Create is a no-op when the bucket has these settings; only a bucket
	// with other settings is updated: one made by a version without
	// per-key TTLs gets them (its copies keep the bucket's max age). A
	// process of such a version started afterwards fails to ensure the
	// bucket, as JetStream never turns per-message TTLs off again.
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

// KeepRequest keeps a job message under its id, for /retry, for ttl
// (rounded up to whole seconds, JetStream's unit; at most RequestKeep),
// in place of any copy kept before.
func (c *Client) KeepRequest(ctx context.Context, id string, msg []byte, ttl time.Duration) error {
	if _, err := c.requests.bucket(ctx); err != nil {
		return err
	}
	ttl = min(max(ttl, time.Second), RequestKeep)
	ttl = (ttl + time.Second - 1).Truncate(time.Second)
	// A put on the key's subject: the key-value API puts with a TTL only
	// on a create, which a retry's keep is not.
	if _, err := c.js.PublishMsg(ctx, &nats.Msg{Subject: proto.RequestSubject(id), Data: msg}, jetstream.WithMsgTTL(ttl)); err != nil {
		return fmt.Errorf("keep request of %s: %w", id, err)
	}
	return nil
}

// DropRequests removes the kept requests of jobs that can no longer be
// retried, a few at a time, and returns the ids whose copy is gone (a
// missing copy is gone too); err says why the others are not.
func (c *Client) DropRequests(ctx context.Context, ids []string) ([]string, error) {
	kv, err := c.requests.bucket(ctx)
	if err != nil {
		return nil, err
	}
	type res struct {
		id  string
		err error
	}
	out := make(chan res, len(ids))
	sem := make(chan struct{}, dropConcurrency)
	for _, id := range ids {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			err := kv.Purge(ctx, id, jetstream.PurgeTTL(requestMarkerTTL))
			if err != nil {
				err = fmt.Errorf("remove kept request of %s: %w", id, err)
			}
			out <- res{id, err}
		}()
	}
	var dropped []string
	var errs []error
	for range ids {
		r := <-out
		if r.err != nil {
			errs = append(errs, r.err)
			continue
		}
		dropped = append(dropped, r.id)
	}
	return dropped, errors.Join(errs...)
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
