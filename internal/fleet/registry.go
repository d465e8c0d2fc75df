package fleet

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

// Worker states.
const (
	StateInitializing = "initializing" // waiting for its ComfyUI
	StateIdle         = "idle"         // pulling, no job in hand
	StateRunning      = "running"      // running a job
	StateUnhealthy    = "unhealthy"    // its ComfyUI stopped answering
)

// Worker is one worker's heartbeat.
type Worker struct {
	ID             string `json:"id"`
	Pool           string `json:"pool"`
	State          string `json:"state"`
	JobID          string `json:"job_id,omitempty"`
	ComfyUIVersion string `json:"comfyui_version,omitempty"`
	Device         string `json:"device,omitempty"`
	VRAMTotal      int64  `json:"vram_total,omitempty"`
	VRAMFree       int64  `json:"vram_free,omitempty"`
	// Progress is the current job's progress, 0 to 1.
	Progress float64 `json:"progress,omitempty"`
	// Models are the model files its ComfyUI offers, by loader input
	// (e.g. "ckpt_name", "lora_name", "vae_name"), read from /object_info.
	Models map[string][]string `json:"models,omitempty"`
	// Warm are the model files of the last workflow it ran: the ones its
	// ComfyUI most likely still holds in memory.
	Warm      []string  `json:"warm,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Registry reads and writes heartbeats.
type Registry struct {
	rdb    redis.UniversalClient
	prefix string
	ttl    time.Duration
}

// NewRegistry returns a registry whose heartbeats expire after ttl
// (0 means 15 s); prefix is prepended to every key (tests).
func NewRegistry(rdb redis.UniversalClient, prefix string, ttl time.Duration) *Registry {
	if ttl == 0 {
		ttl = 15 * time.Second
	}
	return &Registry{rdb: rdb, prefix: prefix, ttl: ttl}
}

// TTL is how long a heartbeat lives; beat more often than that.
func (r *Registry) TTL() time.Duration { return r.ttl }

func (r *Registry) indexKey() string { return r.prefix + "cf:workers" }

// Beat writes w's heartbeat.
func (r *Registry) Beat(ctx context.Context, w Worker) error {
	if w.UpdatedAt.IsZero() {
		w.UpdatedAt = time.Now()
	}
	key := r.prefix + proto.WorkerKey(w.ID)
	_, err := r.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, key)
		p.HSet(ctx, key,
			"id", w.ID, "pool", w.Pool, "state", w.State, "job_id", w.JobID,
			"comfyui_version", w.ComfyUIVersion, "device", w.Device,
			"vram_total", w.VRAMTotal, "vram_free", w.VRAMFree,
			"progress", strconv.FormatFloat(w.Progress, 'f', -1, 64),
			"models", jsonField(w.Models), "warm", jsonField(w.Warm),
			"updated_at", w.UpdatedAt.UnixMilli())
		p.PExpire(ctx, key, r.ttl)
		p.SAdd(ctx, r.indexKey(), w.ID)
		return nil
	})
	if err != nil {
		return fmt.Errorf("beat worker %s: %w", w.ID, err)
	}
	return nil
}

// Remove deletes w's heartbeat (clean shutdown).
func (r *Registry) Remove(ctx context.Context, id string) error {
	_, err := r.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, r.prefix+proto.WorkerKey(id))
		p.SRem(ctx, r.indexKey(), id)
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove worker %s: %w", id, err)
	}
	return nil
}

// List returns the live workers and forgets the expired ones.
func (r *Registry) List(ctx context.Context) ([]Worker, error) {
	ids, err := r.rdb.SMembers(ctx, r.indexKey()).Result()
	if err != nil {
		return nil, fmt.Errorf("list workers: %w", err)
	}
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	if _, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.HGetAll(ctx, r.prefix+proto.WorkerKey(id))
		}
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("list workers: %w", err)
	}
	var out []Worker
	for i, cmd := range cmds {
		h := cmd.Val()
		if len(h) == 0 {
			r.rdb.SRem(ctx, r.indexKey(), ids[i])
			continue
		}
		out = append(out, decodeWorker(h))
	}
	return out, nil
}

// decodeWorker reads a heartbeat hash; a field that does not parse is
// left at its zero value (a heartbeat is advisory).
func decodeWorker(h map[string]string) Worker {
	num := func(k string) int64 { n, _ := strconv.ParseInt(h[k], 10, 64); return n }
	w := Worker{
		ID: h["id"], Pool: h["pool"], State: h["state"], JobID: h["job_id"],
		ComfyUIVersion: h["comfyui_version"], Device: h["device"],
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
	return w
}

func jsonField(v any) string {
	b, err := json.Marshal(v)
	if err != nil || string(b) == "null" {
		return ""
	}
	return string(b)
}
