package rdb

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfyfleet/comfyfleet/proto"
)

// aliveKeep is how long a RunPod worker's mark of life outlives its last
// renewal: a day, far past any lease.
const aliveKeep = 24 * time.Hour

// MarkAlive sets the mark of RunPod worker id (proto.RunPodAliveKey) to
// at. With create false only an existing mark is moved (a worker that
// never polled job-stop keeps having none).
func (db *DB) MarkAlive(ctx context.Context, id string, at time.Time, create bool) error {
	key := db.key(proto.RunPodAliveKey(id))
	v := strconv.FormatInt(at.UnixMilli(), 10)
	var err error
	if create {
		err = db.rdb.Set(ctx, key, v, aliveKeep).Err()
	} else {
		err = db.rdb.SetXX(ctx, key, v, aliveKeep).Err()
	}
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("mark RunPod worker %s alive: %w", id, err)
	}
	return nil
}

// LastAlive is the last mark of RunPod worker id; ok is false when it has
// none.
func (db *DB) LastAlive(ctx context.Context, id string) (at time.Time, ok bool, err error) {
	v, err := db.rdb.Get(ctx, db.key(proto.RunPodAliveKey(id))).Result()
	if errors.Is(err, redis.Nil) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, fmt.Errorf("read mark of RunPod worker %s: %w", id, err)
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, false, &CorruptError{Key: proto.RunPodAliveKey(id), Field: "value", Value: v, Reason: "is not a number"}
	}
	return time.UnixMilli(ms), true, nil
}
