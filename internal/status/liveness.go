package status

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Liveness keeps three small indexes beside the records, which the
// dispatcher sweeps so that no job is left behind by a dead process:
//
//   - leases (cf:leases, a sorted set by expiry, and cf:lease:<id>, a hash):
//     the worker running a job renews its lease; a lease that expires names
//     a silent worker, and its job message's ack subject lets the
//     dispatcher hand the job back at once instead of after AckWait;
//   - the TTL index (cf:ttl, a sorted set by deadline) of admitted jobs, so
//     that a job still queued past its policy.ttl is timed out;
//   - the attempt log (cf:attempts:<id>, a list) of every failed attempt's
//     error, which a dead letter carries.

// leaseKeep is how long a lease's hash outlives its last renewal, so that
// a sweeper that comes late still finds the ack subject.
const leaseKeep = 24 * time.Hour

// attemptsKeep is how long an attempt log is kept after its last entry.
const attemptsKeep = DefaultTTL + TTLSlack

// Lease is a worker's hold on a running job.
type Lease struct {
	JobID    string
	Attempt  int
	WorkerID string
	// Reply is the ack subject of the job's delivery to the worker.
	Reply string
	// Deadline is when the job's execution timeout ends; zero if unknown.
	Deadline time.Time
	// Expires is when the lease lapses unless renewed.
	Expires time.Time
}

func (s *Store) leasesKey() string            { return s.prefix + "cf:leases" }
func (s *Store) leaseKey(id string) string    { return s.prefix + "cf:lease:" + id }
func (s *Store) ttlKey() string               { return s.prefix + "cf:ttl" }
func (s *Store) attemptsKey(id string) string { return s.prefix + "cf:attempts:" + id }

// Lease records that l.WorkerID runs attempt l.Attempt of the job until
// now+ttl; Renew extends it and Release ends it.
func (s *Store) Lease(ctx context.Context, l Lease, ttl time.Duration) error {
	exp := s.clock.Now().Add(ttl)
	var deadline int64
	if !l.Deadline.IsZero() {
		deadline = l.Deadline.UnixMilli()
	}
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		key := s.leaseKey(l.JobID)
		p.Del(ctx, key)
		p.HSet(ctx, key, "attempt", l.Attempt, "worker_id", l.WorkerID, "reply", l.Reply, "deadline", deadline)
		p.PExpire(ctx, key, leaseKeep)
		p.ZAdd(ctx, s.leasesKey(), redis.Z{Score: float64(exp.UnixMilli()), Member: l.JobID})
		return nil
	})
	if err != nil {
		return fmt.Errorf("lease job %s: %w", l.JobID, err)
	}
	return nil
}

// ErrLeaseLost is returned by Renew when the lease is gone: the
// dispatcher took it, and the job was handed back.
var ErrLeaseLost = errors.New("lease lost")

// Renew extends the job's lease to now+ttl if attempt still holds it.
func (s *Store) Renew(ctx context.Context, id string, attempt int, ttl time.Duration) error {
	exp := s.clock.Now().Add(ttl).UnixMilli()
	n, err := renewLease.Run(ctx, s.rdb, []string{s.leasesKey(), s.leaseKey(id)}, id, attempt, exp).Int()
	if err != nil {
		return fmt.Errorf("renew lease of job %s: %w", id, err)
	}
	if n == 0 {
		return fmt.Errorf("renew lease of job %s: %w", id, ErrLeaseLost)
	}
	return nil
}

var renewLease = redis.NewScript(`
if redis.call('HGET', KEYS[2], 'attempt') ~= ARGV[2] then return 0 end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
`)

// Release ends the job's lease if attempt still holds it.
func (s *Store) Release(ctx context.Context, id string, attempt int) error {
	if err := releaseLease.Run(ctx, s.rdb, []string{s.leasesKey(), s.leaseKey(id)}, id, attempt).Err(); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("release lease of job %s: %w", id, err)
	}
	return nil
}

var releaseLease = redis.NewScript(`
if redis.call('HGET', KEYS[2], 'attempt') ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
`)

// ExpiredLeases lists up to limit jobs whose lease lapsed before now.
func (s *Store) ExpiredLeases(ctx context.Context, limit int) ([]string, error) {
	ids, err := s.rdb.ZRangeByScore(ctx, s.leasesKey(), &redis.ZRangeBy{
		Min: "-inf", Max: strconv.FormatInt(s.clock.Now().UnixMilli(), 10), Count: int64(limit),
	}).Result()
	if err != nil {
		return nil, fmt.Errorf("list expired leases: %w", err)
	}
	return ids, nil
}

// TakeLease removes a lapsed lease and returns it; of several callers
// only one gets it (nil, nil for the others, or when it was renewed).
func (s *Store) TakeLease(ctx context.Context, id string) (*Lease, error) {
	vals, err := takeLease.Run(ctx, s.rdb, []string{s.leasesKey(), s.leaseKey(id)}, id, s.clock.Now().UnixMilli()).StringSlice()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("take lease of job %s: %w", id, err)
	}
	if len(vals) == 0 {
		return nil, nil
	}
	h := map[string]string{}
	for i := 0; i+1 < len(vals); i += 2 {
		h[vals[i]] = vals[i+1]
	}
	l := &Lease{JobID: id, WorkerID: h["worker_id"], Reply: h["reply"]}
	l.Attempt, _ = strconv.Atoi(h["attempt"])
	if ms, _ := strconv.ParseInt(h["deadline"], 10, 64); ms > 0 {
		l.Deadline = time.UnixMilli(ms)
	}
	if ms, _ := strconv.ParseInt(h["expires"], 10, 64); ms > 0 {
		l.Expires = time.UnixMilli(ms)
	}
	return l, nil
}

var takeLease = redis.NewScript(`
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return {} end
redis.call('ZREM', KEYS[1], ARGV[1])
local h = redis.call('HGETALL', KEYS[2])
redis.call('DEL', KEYS[2])
table.insert(h, 'expires')
table.insert(h, score)
return h
`)

// TrackTTL puts an admitted job in the TTL index: it is due at deadline.
func (s *Store) TrackTTL(ctx context.Context, id string, deadline time.Time) error {
	if err := s.rdb.ZAdd(ctx, s.ttlKey(), redis.Z{Score: float64(deadline.UnixMilli()), Member: id}).Err(); err != nil {
		return fmt.Errorf("track TTL of job %s: %w", id, err)
	}
	return nil
}

// DueTTL lists up to limit jobs of the TTL index whose deadline passed.
func (s *Store) DueTTL(ctx context.Context, limit int) ([]string, error) {
	ids, err := s.rdb.ZRangeByScore(ctx, s.ttlKey(), &redis.ZRangeBy{
		Min: "-inf", Max: strconv.FormatInt(s.clock.Now().UnixMilli(), 10), Count: int64(limit),
	}).Result()
	if err != nil {
		return nil, fmt.Errorf("list jobs past their TTL: %w", err)
	}
	return ids, nil
}

// ForgetTTL takes a job out of the TTL index.
func (s *Store) ForgetTTL(ctx context.Context, id string) error {
	if err := s.rdb.ZRem(ctx, s.ttlKey(), id).Err(); err != nil {
		return fmt.Errorf("forget TTL of job %s: %w", id, err)
	}
	return nil
}

// AddAttemptError appends a failed attempt's error to the job's attempt
// log and returns how many failed attempts it holds. A repeat of the last
// entry is not added twice.
func (s *Store) AddAttemptError(ctx context.Context, id string, attempt int, msg string) (int, error) {
	entry := fmt.Sprintf("attempt %d: %s", attempt, msg)
	n, err := addAttempt.Run(ctx, s.rdb, []string{s.attemptsKey(id)}, entry, millis(attemptsKeep)).Int()
	if err != nil {
		return 0, fmt.Errorf("log attempt of job %s: %w", id, err)
	}
	return n, nil
}

// ClearAttempts empties the job's attempt log: a replay starts afresh.
func (s *Store) ClearAttempts(ctx context.Context, id string) error {
	if err := s.rdb.Del(ctx, s.attemptsKey(id)).Err(); err != nil {
		return fmt.Errorf("clear attempts of job %s: %w", id, err)
	}
	return nil
}

var addAttempt = redis.NewScript(`
local last = redis.call('LINDEX', KEYS[1], -1)
if last ~= ARGV[1] then redis.call('RPUSH', KEYS[1], ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('LLEN', KEYS[1])
`)

// AttemptErrors returns the job's attempt log, oldest first.
func (s *Store) AttemptErrors(ctx context.Context, id string) ([]string, error) {
	v, err := s.rdb.LRange(ctx, s.attemptsKey(id), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("read attempts of job %s: %w", id, err)
	}
	return v, nil
}
