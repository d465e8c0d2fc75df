package rdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfyfleet/comfyfleet/proto"
)

// ErrBatchNotFound: no batch index and no status record names the batch.
var ErrBatchNotFound = errors.New("batch not found")

// The batch index, written by `comfyfleet submit` before it submits
// anything, so that watch, status and cancel can find a batch's items by
// the batch id alone:
//
//	cf:batch:<batch>        hash: "meta" -> BatchMeta JSON,
//	                        "item:<name>" -> IndexItem JSON
//	cf:batch:<batch>:sent   set of the job ids whose submission got a PubAck
//
// Both keys expire with the batch's records. Batches sent by other
// producers have no index; for them the status records are scanned for
// their batch_id field (see DB.BatchMembers).

// BatchMeta describes a batch in the index.
type BatchMeta struct {
	ID        string     `json:"id"`
	Items     int        `json:"items"`
	Pool      string     `json:"pool,omitempty"`
	Lane      proto.Lane `json:"lane,omitempty"`
	Source    string     `json:"source,omitempty"`
	Tenant    string     `json:"tenant,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
}

// IndexItem is one item in the index, with its latest job.
type IndexItem struct {
	Name  string `json:"name"`
	JobID string `json:"id"`
	Index int    `json:"i"`
	// Try counts the item's jobs, JobID's being the latest; 0 means 1.
	Try    int                        `json:"try,omitempty"`
	Params map[string]json.RawMessage `json:"params,omitempty"`
}

func (db *DB) batchKey(batch string) string { return db.key(proto.BatchKey(batch)) }
func (db *DB) sentKey(batch string) string  { return db.batchKey(batch) + ":sent" }

// PutBatch writes the batch's meta and items and sets the index's expiry. It
// is idempotent; a first run's meta (its creation time) is kept.
func (db *DB) PutBatch(ctx context.Context, meta BatchMeta, items []IndexItem, ttl time.Duration) error {
	key := db.batchKey(meta.ID)
	mj, _ := json.Marshal(meta)
	if err := db.rdb.HSetNX(ctx, key, "meta", mj).Err(); err != nil {
		return fmt.Errorf("write batch index %s: %w", meta.ID, err)
	}
	const chunk = 500
	for start := 0; start < len(items); start += chunk {
		end := min(start+chunk, len(items))
		args := make([]any, 0, 2*(end-start))
		for _, it := range items[start:end] {
			ij, _ := json.Marshal(it)
			args = append(args, "item:"+it.Name, ij)
		}
		if err := db.rdb.HSet(ctx, key, args...).Err(); err != nil {
			return fmt.Errorf("write batch index %s: %w", meta.ID, err)
		}
	}
	return db.touchBatch(ctx, meta.ID, ttl)
}

// touchBatch sets the expiry of the batch's keys.
func (db *DB) touchBatch(ctx context.Context, batch string, ttl time.Duration) error {
	_, err := db.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.PExpire(ctx, db.batchKey(batch), ttl)
		p.PExpire(ctx, db.sentKey(batch), ttl)
		return nil
	})
	if err != nil {
		return fmt.Errorf("write batch index %s: %w", batch, err)
	}
	return nil
}

// MarkBatchSent records that the jobs' submissions were acknowledged.
func (db *DB) MarkBatchSent(ctx context.Context, batch string, jobIDs []string, ttl time.Duration) error {
	if len(jobIDs) == 0 {
		return nil
	}
	members := make([]any, len(jobIDs))
	for i, id := range jobIDs {
		members[i] = id
	}
	_, err := db.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.SAdd(ctx, db.sentKey(batch), members...)
		p.PExpire(ctx, db.sentKey(batch), ttl)
		return nil
	})
	if err != nil {
		return fmt.Errorf("mark batch %s sent: %w", batch, err)
	}
	return nil
}

// BatchSent returns the job ids of the batch whose submission was acknowledged.
func (db *DB) BatchSent(ctx context.Context, batch string) (map[string]bool, error) {
	ids, err := db.rdb.SMembers(ctx, db.sentKey(batch)).Result()
	if err != nil {
		return nil, fmt.Errorf("read batch %s: %w", batch, err)
	}
	out := make(map[string]bool, len(ids))
	for _, id := range ids {
		out[id] = true
	}
	return out, nil
}

// LoadBatch reads the batch's index: its meta and its items in index order.
// ErrBatchNotFound when there is none.
func (db *DB) LoadBatch(ctx context.Context, batch string) (*BatchMeta, []IndexItem, error) {
	h, err := db.rdb.HGetAll(ctx, db.batchKey(batch)).Result()
	if err != nil {
		return nil, nil, fmt.Errorf("read batch %s: %w", batch, err)
	}
	if len(h) == 0 {
		return nil, nil, fmt.Errorf("read batch %s: %w", batch, ErrBatchNotFound)
	}
	meta := &BatchMeta{ID: batch}
	if v, ok := h["meta"]; ok {
		if err := json.Unmarshal([]byte(v), meta); err != nil {
			return nil, nil, fmt.Errorf("read batch %s: meta: %w", batch, err)
		}
	}
	items := make([]IndexItem, 0, len(h))
	for k, v := range h {
		if !strings.HasPrefix(k, "item:") {
			continue
		}
		var it IndexItem
		if err := json.Unmarshal([]byte(v), &it); err != nil || it.JobID == "" {
			return nil, nil, fmt.Errorf("read batch %s: field %s is not an item", batch, k)
		}
		items = append(items, it)
	}
	sortItems(items)
	return meta, items, nil
}

func sortItems(items []IndexItem) {
	sort.Slice(items, func(i, j int) bool {
		if items[i].Index != items[j].Index {
			return items[i].Index < items[j].Index
		}
		return items[i].Name < items[j].Name
	})
}

// BatchMembers returns the batch's items: from the index when there is one,
// else from the status records whose batch_id is the batch (any producer's
// batch; the item is named by its job id and ordered by submission time).
// ErrBatchNotFound when neither knows the batch.
func (db *DB) BatchMembers(ctx context.Context, batch string) (*BatchMeta, []IndexItem, error) {
	meta, items, err := db.LoadBatch(ctx, batch)
	if !errors.Is(err, ErrBatchNotFound) {
		return meta, items, err
	}
	type found struct {
		id        string
		submitted string
	}
	var all []found
	iter := db.rdb.Scan(ctx, 0, db.key(proto.JobKey("*")), 1000).Iterator()
	var keys []string
	flush := func() error {
		if len(keys) == 0 {
			return nil
		}
		cmds := make([]*redis.SliceCmd, len(keys))
		_, err := db.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, k := range keys {
				cmds[i] = p.HMGet(ctx, k, "batch_id", "id", "submitted_at")
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		for _, c := range cmds {
			v := c.Val()
			if len(v) == 3 && v[0] == batch {
				id, _ := v[1].(string)
				sub, _ := v[2].(string)
				if id != "" {
					all = append(all, found{id: id, submitted: sub})
				}
			}
		}
		keys = keys[:0]
		return nil
	}
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
		if len(keys) == 500 {
			if err := flush(); err != nil {
				return nil, nil, fmt.Errorf("scan records of batch %s: %w", batch, err)
			}
		}
	}
	if err := iter.Err(); err != nil {
		return nil, nil, fmt.Errorf("scan records of batch %s: %w", batch, err)
	}
	if err := flush(); err != nil {
		return nil, nil, fmt.Errorf("scan records of batch %s: %w", batch, err)
	}
	if len(all) == 0 {
		return nil, nil, fmt.Errorf("batch %s: %w", batch, ErrBatchNotFound)
	}
	sort.Slice(all, func(i, j int) bool {
		if len(all[i].submitted) != len(all[j].submitted) {
			return len(all[i].submitted) < len(all[j].submitted)
		}
		if all[i].submitted != all[j].submitted {
			return all[i].submitted < all[j].submitted
		}
		return all[i].id < all[j].id
	})
	items = make([]IndexItem, len(all))
	for i, f := range all {
		items[i] = IndexItem{Name: f.id, JobID: f.id, Index: i}
	}
	return &BatchMeta{ID: batch, Items: len(items)}, items, nil
}
