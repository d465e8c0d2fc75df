package rdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfyfleet/comfyfleet/proto"
)

// Beat writes a worker's heartbeat; it lives for the DB's WorkerTTL.
func (db *DB) Beat(ctx context.Context, w proto.Heartbeat) error {
	if w.UpdatedAt.IsZero() {
		w.UpdatedAt = time.Now()
	}
	key := db.key(proto.WorkerKey(w.ID))
	_, err := db.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, key)
		p.HSet(ctx, key,
			"id", w.ID, "pool", w.Pool, "state", w.State, "job_id", w.JobID,
			"comfyui_version", w.ComfyUIVersion, "device", w.Device,
			"vram_total", w.VRAMTotal, "vram_free", w.VRAMFree,
			"progress", strconv.FormatFloat(w.Progress, 'f', -1, 64),
			"models", jsonField(w.Models), "warm", jsonField(w.Warm),
			"cached", jsonField(w.Cached), "more_pools", jsonField(w.MorePools),
			"last_error", w.LastError, "paused", jsonField(w.Paused),
			"updated_at", w.UpdatedAt.UnixMilli())
		p.PExpire(ctx, key, db.workerTTL)
		p.SAdd(ctx, db.key(proto.WorkersKey), w.ID)
		return nil
	})
	if err != nil {
		return fmt.Errorf("beat worker %s: %w", w.ID, err)
	}
	return nil
}

// RemoveWorker deletes a worker's heartbeat (clean shutdown).
func (db *DB) RemoveWorker(ctx context.Context, id string) error {
	_, err := db.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, db.key(proto.WorkerKey(id)))
		p.SRem(ctx, db.key(proto.WorkersKey), id)
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove worker %s: %w", id, err)
	}
	return nil
}

// Workers returns the live workers' heartbeats and forgets the expired
// ones.
func (db *DB) Workers(ctx context.Context) ([]proto.Heartbeat, error) {
	ids, err := db.rdb.SMembers(ctx, db.key(proto.WorkersKey)).Result()
	if err != nil {
		return nil, fmt.Errorf("list workers: %w", err)
	}
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	if _, err := db.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.HGetAll(ctx, db.key(proto.WorkerKey(id)))
		}
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("list workers: %w", err)
	}
	var out []proto.Heartbeat
	for i, cmd := range cmds {
		h := cmd.Val()
		if len(h) == 0 {
			db.rdb.SRem(ctx, db.key(proto.WorkersKey), ids[i])
			continue
		}
		out = append(out, decodeWorker(h))
	}
	return out, nil
}

// decodeWorker reads a heartbeat hash; a field that does not parse is
// left at its zero value (a heartbeat is advisory).
func decodeWorker(h map[string]string) proto.Heartbeat {
	num := func(k string) int64 { n, _ := strconv.ParseInt(h[k], 10, 64); return n }
	w := proto.Heartbeat{
		ID: h["id"], Pool: h["pool"], State: h["state"], JobID: h["job_id"],
		ComfyUIVersion: h["comfyui_version"], Device: h["device"], LastError: h["last_error"],
		VRAMTotal: num("vram_total"), VRAMFree: num("vram_free"),
		UpdatedAt: time.UnixMilli(num("updated_at")),
	}
	w.Progress, _ = strconv.ParseFloat(h["progress"], 64)
	if s := h["models"]; s != "" {
		_ = json.Unmarshal([]byte(s), &w.Models)
	}
	if s := h["warm"]; s != "" {
		_ = json.Unmarshal([]byte(s), &w.Warm)
	}
	if s := h["cached"]; s != "" {
		_ = json.Unmarshal([]byte(s), &w.Cached)
	}
	if s := h["more_pools"]; s != "" {
		_ = json.Unmarshal([]byte(s), &w.MorePools)
	}
	if s := h["paused"]; s != "" {
		_ = json.Unmarshal([]byte(s), &w.Paused)
	}
	return w
}

func jsonField(v any) string {
	b, err := json.Marshal(v)
	if err != nil || string(b) == "null" {
		return ""
	}
	return string(b)
}

// WorkerTTL is how long a heartbeat lives; beat more often than that.
func (db *DB) WorkerTTL() time.Duration { return db.workerTTL }
