package rdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"

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

// LaneRates returns the jobs per minute that ended on each lane
// ("<pool>/<lane>"): the last full minute's count, weighted by the part
// of it that is still within the last 60 s, plus this minute's.
func (db *DB) LaneRates(ctx context.Context) (map[string]float64, error) {
	now, err := db.Time(ctx)
	if err != nil {
		return nil, err
	}
	ms := now.UnixMilli()
	minute := ms / 60000
	var cur, prev *redis.MapStringStringCmd
	if _, err := db.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		cur = p.HGetAll(ctx, db.key(proto.RateKey(strconv.FormatInt(minute, 10))))
		prev = p.HGetAll(ctx, db.key(proto.RateKey(strconv.FormatInt(minute-1, 10))))
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read lane rates: %w", err)
	}
	weight := 1 - float64(ms%60000)/60000
	out := map[string]float64{}
	for k, v := range cur.Val() {
		n, _ := strconv.ParseInt(v, 10, 64)
		out[k] += float64(n)
	}
	for k, v := range prev.Val() {
		n, _ := strconv.ParseInt(v, 10, 64)
		out[k] += float64(n) * weight
	}
	return out, nil
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

// BatchSize is the number of items of a batch whose index exists (one
// `comfyfleet submit` wrote); ok is false without an index.
func (db *DB) BatchSize(ctx context.Context, batch string) (n int, ok bool, err error) {
	raw, err := db.rdb.HGet(ctx, db.batchKey(batch), "meta").Result()
	if errors.Is(err, redis.Nil) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read batch %s: %w", batch, err)
	}
	var meta BatchMeta
	if err := json.Unmarshal([]byte(raw), &meta); err != nil {
		return 0, false, fmt.Errorf("read batch %s: %w", batch, err)
	}
	return meta.Items, true, nil
}
