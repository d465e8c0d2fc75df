package rdb

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/redis/go-redis/v9"

	"github.com/comfyfleet/comfyfleet/proto"
)

// Controls are the operator's standing orders to the workers: the paused
// lanes ("<pool>/<lane>", proto.PausedLane) and the workers told to drain.
// Workers read them with every heartbeat and when told they changed.
type Controls struct {
	Paused   []string `json:"paused"`
	Draining []string `json:"draining"`
}

// ReadControls reads the paused lanes and the draining workers, sorted.
func (db *DB) ReadControls(ctx context.Context) (*Controls, error) {
	var paused, drain *redis.StringSliceCmd
	if _, err := db.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		paused = p.SMembers(ctx, db.key(proto.PausedKey))
		drain = p.SMembers(ctx, db.key(proto.DrainKey))
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read controls: %w", err)
	}
	c := &Controls{Paused: paused.Val(), Draining: drain.Val()}
	if c.Paused == nil {
		c.Paused = []string{}
	}
	if c.Draining == nil {
		c.Draining = []string{}
	}
	sort.Strings(c.Paused)
	sort.Strings(c.Draining)
	return c, nil
}

// SetPaused pauses (paused true) or resumes lanes of pool.
func (db *DB) SetPaused(ctx context.Context, pool string, lanes []proto.Lane, paused bool) error {
	members := make([]any, 0, len(lanes))
	for _, l := range lanes {
		members = append(members, proto.PausedLane(pool, l))
	}
	var err error
	if paused {
		err = db.rdb.SAdd(ctx, db.key(proto.PausedKey), members...).Err()
	} else {
		err = db.rdb.SRem(ctx, db.key(proto.PausedKey), members...).Err()
	}
	if err != nil {
		return fmt.Errorf("set pause of pool %s: %w", pool, err)
	}
	return nil
}

// SetDraining tells a worker to drain (draining true) or to pull again.
func (db *DB) SetDraining(ctx context.Context, workerID string, draining bool) error {
	var err error
	if draining {
		err = db.rdb.SAdd(ctx, db.key(proto.DrainKey), workerID).Err()
	} else {
		err = db.rdb.SRem(ctx, db.key(proto.DrainKey), workerID).Err()
	}
	if err != nil {
		return fmt.Errorf("set drain of worker %s: %w", workerID, err)
	}
	return nil
}

// RecentJobs returns the records of the most recently made jobs, newest
// first, up to limit (at most proto.RecentJobsCap); ids whose record
// expired are dropped from the index as they are met. keep, when not nil,
// filters the records: only those it accepts count towards limit, and the
// whole index is read at most once.
func (db *DB) RecentJobs(ctx context.Context, limit int, keep func(*proto.Record) bool) ([]*proto.Record, error) {
	if limit <= 0 || limit > proto.RecentJobsCap {
		limit = proto.RecentJobsCap
	}
	const page = 200
	var out []*proto.Record
	idx := db.key(proto.RecentKey)
	for start := int64(0); len(out) < limit; start += page {
		ids, err := db.rdb.ZRevRange(ctx, idx, start, start+page-1).Result()
		if err != nil {
			return nil, fmt.Errorf("read recent jobs: %w", err)
		}
		if len(ids) == 0 {
			break
		}
		cmds := make([]*redis.MapStringStringCmd, len(ids))
		if _, err := db.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, id := range ids {
				cmds[i] = p.HGetAll(ctx, db.key(proto.JobKey(id)))
			}
			return nil
		}); err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("read recent jobs: %w", err)
		}
		var gone []any
		for i, cmd := range cmds {
			h := cmd.Val()
			if len(h) == 0 {
				gone = append(gone, ids[i])
				continue
			}
			rec, err := db.decode(ids[i], h)
			if err != nil {
				continue // a corrupt record is the status reader's to report
			}
			if keep == nil || keep(rec) {
				out = append(out, rec)
				if len(out) == limit {
					break
				}
			}
		}
		if len(gone) > 0 {
			if err := db.rdb.ZRem(ctx, idx, gone...).Err(); err != nil {
				return nil, fmt.Errorf("read recent jobs: %w", err)
			}
			start -= int64(len(gone))
		}
		if len(ids) < page {
			break
		}
	}
	return out, nil
}
