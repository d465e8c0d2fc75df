package rdb

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfyfleet/comfyfleet/proto"
)

// due lists up to ARGV[1] members of the sorted set KEYS[1] whose score
// (a Unix millisecond) passed by Redis's clock.
var due = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now), 'LIMIT', 0, tonumber(ARGV[1]))
`)

// DueTTL lists up to limit jobs of the TTL index whose policy.ttl ran out.
func (db *DB) DueTTL(ctx context.Context, limit int) ([]string, error) {
	ids, err := due.Run(ctx, db.rdb, []string{db.key(proto.TTLKey)}, limit).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("list jobs past their TTL: %w", err)
	}
	return ids, nil
}

// LapsedLeases lists up to limit jobs whose lease lapsed.
func (db *DB) LapsedLeases(ctx context.Context, limit int) ([]string, error) {
	ids, err := due.Run(ctx, db.rdb, []string{db.key(proto.LeasesKey)}, limit).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("list lapsed leases: %w", err)
	}
	return ids, nil
}

// dueKept takes up to ARGV[1] jobs of the kept index (KEYS[1]) whose
// retention ended by Redis's clock: each whose record is gone is claimed
// for ARGV[3] ms (its score moves on, so no other sweeper takes it
// meanwhile) and returned. A record still there is either ending this
// very millisecond (Redis expires a key only once its time is past) and
// is looked at again when it is gone, or lives again (a replay made it
// anew) and leaves the index, which its own end fills again (so does one
// that never expires, which no sweep waits for). ARGV[2] is
// the records' key prefix. Reply: {claimed score, id…}.
var dueKept = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local claim = string.format('%d', now + tonumber(ARGV[3]))
local terminal = {COMPLETED = true, FAILED = true, CANCELLED = true, TIMED_OUT = true}
local out = {claim}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now), 'LIMIT', 0, tonumber(ARGV[1]))) do
  local key = ARGV[2] .. id
  local status = redis.call('HGET', key, 'status')
  if not status then
    redis.call('ZADD', KEYS[1], claim, id)
    table.insert(out, id)
  elseif terminal[status] and redis.call('PTTL', key) >= 0 then
    redis.call('ZADD', KEYS[1], string.format('%d', now + redis.call('PTTL', key) + 1), id)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
`)

// forgetKept removes from the kept index (KEYS[1]) the ids of ARGV[2…]
// still claimed with the score ARGV[1]: an id indexed anew meanwhile
// stays.
var forgetKept = redis.NewScript(`
local claim = tonumber(ARGV[1])
for i = 2, #ARGV do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) == claim then redis.call('ZREM', KEYS[1], ARGV[i]) end
end
return 0
`)

// keptClaim is how long a sweeper holds the kept requests it took before
// another may take them: the time to remove them.
const keptClaim = time.Minute

// DueKept takes up to limit jobs whose request copy must go: their record
// outlived its retention. They are held for a minute, in which the caller
// removes each copy and then calls ForgetKept with the claim; a caller
// that dies meanwhile leaves them to the next sweeper after the minute.
func (db *DB) DueKept(ctx context.Context, limit int) (ids []string, claim string, err error) {
	out, err := dueKept.Run(ctx, db.rdb, []string{db.key(proto.KeptKey)}, limit, db.key(proto.JobKey("")), keptClaim.Milliseconds()).StringSlice()
	if err != nil {
		return nil, "", fmt.Errorf("list kept requests to remove: %w", err)
	}
	if len(out) == 0 {
		return nil, "", fmt.Errorf("list kept requests to remove: empty script reply")
	}
	return out[1:], out[0], nil
}

// ForgetKept takes the jobs DueKept gave under claim out of the kept
// index, once their copies are gone.
func (db *DB) ForgetKept(ctx context.Context, claim string, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	args := make([]any, 0, len(ids)+1)
	args = append(args, claim)
	for _, id := range ids {
		args = append(args, id)
	}
	if err := forgetKept.Run(ctx, db.rdb, []string{db.key(proto.KeptKey)}, args...).Err(); err != nil {
		return fmt.Errorf("forget removed requests: %w", err)
	}
	return nil
}

// sweepClock records a sweep in KEYS[1] and says whether lease reclaims
// must wait: when the previous sweep is older than ARGV[1] ms (Redis was
// down, or no sweeper ran), nobody could renew a lease meanwhile, so
// reclaims wait ARGV[2] ms for the holders to renew. Reply: ms to wait.
var sweepClock = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = tonumber(redis.call('HGET', KEYS[1], 'last') or '0')
local resume = tonumber(redis.call('HGET', KEYS[1], 'resume') or '0')
redis.call('HSET', KEYS[1], 'last', string.format('%d', now))
if last > 0 and now - last > tonumber(ARGV[1]) then
  resume = now + tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], 'resume', string.format('%d', resume))
end
redis.call('PEXPIRE', KEYS[1], 86400000)
if resume > now then return resume - now end
return 0
`)

// SweepClock records a sweep. When the previous one (by any sweeper) is
// older than outage, no lease could be renewed in between; it returns how
// long lease reclaims must still wait (up to resume from the first sweep
// after the gap) so that the holders renew first. Zero: reclaim now.
func (db *DB) SweepClock(ctx context.Context, outage, resume time.Duration) (time.Duration, error) {
	ms, err := sweepClock.Run(ctx, db.rdb, []string{db.key(proto.SweepKey)}, millis(outage), millis(resume)).Int64()
	if err != nil {
		return 0, fmt.Errorf("record sweep: %w", err)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// Reclaimed is what Reclaim did with a lapsed lease.
type Reclaimed int

// The outcomes of Reclaim.
const (
	// Skipped: the lease was renewed, taken by another sweeper, or is not
	// the record's attempt's; nothing to do.
	Skipped Reclaimed = iota
	// Requeued: the job went back to the queue (one more failed attempt
	// in its log); NAK the delivery so it is redelivered at once.
	Requeued
	// TimedOut: the job was past its execution deadline plus the grace;
	// it is TIMED_OUT (proto.MsgWorkerSilent). Ack the delivery.
	TimedOut
	// Settle: the record had ended (ack the delivery) or waits in the
	// queue, was lost, or owes a dead letter (NAK it); see Ack.
	Settle
)

// Reclaim is the sweeper's step for a job whose lease lapsed: the lease is
// taken (of several sweepers only one gets it) and the job handed back or
// timed out, in one atomic step.
type Reclaim struct {
	Outcome Reclaimed
	// Ack says how to settle the delivery: ack (true) or NAK (false).
	Ack      bool
	Lease    *Lease
	Record   *proto.Record // nil when the record was lost
	Failures int
}

// Reclaim takes a lapsed lease; see Reclaim.
func (db *DB) Reclaim(ctx context.Context, id string, grace time.Duration) (*Reclaim, error) {
	out, _ := json.Marshal(proto.Failure{Error: proto.MsgWorkerSilent})
	r, err := db.run(ctx, "reclaim", id, grace.Milliseconds(), millis(AttemptsKeep), proto.MsgWorkerSilent, string(out), proto.MsgLeaseLapsed)
	if err != nil {
		return nil, err
	}
	res := &Reclaim{Record: r.rec, Failures: int(r.n)}
	if len(r.extra) > 0 {
		if res.Lease, err = decodeLease(id, r.extra); err != nil {
			return nil, err
		}
	}
	switch r.code {
	case "skip":
		res.Outcome = Skipped
	case "requeued":
		res.Outcome = Requeued
	case "timedout":
		res.Outcome, res.Ack = TimedOut, true
	case "ack":
		res.Outcome, res.Ack = Settle, true
	case "nak", "notfound":
		res.Outcome = Settle
	default:
		return nil, r.unexpected()
	}
	if res.Lease == nil && res.Outcome != Skipped {
		res.Outcome = Skipped
	}
	return res, nil
}

// Time is Redis's clock, the one every lease and record time is read on.
func (db *DB) Time(ctx context.Context) (time.Time, error) {
	t, err := db.rdb.Time(ctx).Result()
	if err != nil {
		return time.Time{}, fmt.Errorf("read redis time: %w", err)
	}
	return t, nil
}
