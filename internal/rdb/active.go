package rdb

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfyfleet/comfyfleet/proto"
)

// Releasing a held job (fair share between tenants) asks Redis two
// things at once: is the job still to run (a job cancelled, timed out or
// gone while it waited is dropped instead), and, for a tenant with a
// concurrency cap, is there room under the cap. The tenant's active set
// (proto.ActiveKey) counts the jobs released and not ended; the
// transition script takes a job out of it when it ends.

// releaseScript: KEYS[1] the tenant's active set, KEYS[2] the job's
// record; ARGV[1] the job id, ARGV[2] the cap (0: none), ARGV[3] the
// prefix of the record keys, ARGV[4] how long (ms) the set outlives its
// last release. Replies "ok", "full" or "gone".
var releaseScript = redis.NewScript(`
local terminal = {COMPLETED = true, FAILED = true, CANCELLED = true, TIMED_OUT = true}
local st = redis.call('HGET', KEYS[2], 'status')
if not st or terminal[st] then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 'gone'
end
local cap = tonumber(ARGV[2])
if cap <= 0 or redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 'ok' end
if redis.call('ZCARD', KEYS[1]) >= cap then
  -- A job that ended without the set hearing of it (its record expired,
  -- or was lost in a failover) holds no place.
  for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local s = redis.call('HGET', ARGV[3] .. m, 'status')
    if not s or terminal[s] then redis.call('ZREM', KEYS[1], m) end
  end
  if redis.call('ZCARD', KEYS[1]) >= cap then return 'full' end
end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 'ok'
`)

// HeldRelease is the answer of [DB.ReleaseHeld].
type HeldRelease int

// The answers of ReleaseHeld.
const (
	// Released: the job may go onto its lane (and, under a cap, holds a
	// place in its tenant's active set).
	Released HeldRelease = iota
	// Full: the tenant has cap jobs on lanes or running; the job waits.
	Full
	// Gone: the job ended (or its record is gone) while it waited; its
	// held message is to be dropped.
	Gone
)

// activeKeep is how long a tenant's active set outlives its last
// release: longer than any job runs, so that only an abandoned set
// expires.
const activeKeep = DefaultTTL + 24*time.Hour

// ReleaseHeld decides whether the held job id of tenant may go onto its
// lane now, within the tenant's concurrency cap (0: none). Under a cap
// the job takes a place in the tenant's active set until it ends.
func (db *DB) ReleaseHeld(ctx context.Context, tenant, id string, cap int) (HeldRelease, error) {
	keys := []string{db.key(proto.ActiveKey(tenant)), db.key(proto.JobKey(id))}
	got, err := releaseScript.Run(ctx, db.rdb, keys, id, cap, db.key(proto.JobKey("")), millis(activeKeep)).Text()
	if err != nil {
		return 0, fmt.Errorf("release job %s: %w", id, err)
	}
	switch got {
	case "ok":
		return Released, nil
	case "full":
		return Full, nil
	case "gone":
		return Gone, nil
	}
	return 0, fmt.Errorf("release job %s: script replied %q", id, got)
}

// Active counts the jobs of tenant that hold a place under its
// concurrency cap: released from the hold and not seen ended.
func (db *DB) Active(ctx context.Context, tenant string) (int64, error) {
	n, err := db.rdb.ZCard(ctx, db.key(proto.ActiveKey(tenant))).Result()
	if err != nil {
		return 0, fmt.Errorf("count active jobs of tenant %s: %w", tenant, err)
	}
	return n, nil
}
