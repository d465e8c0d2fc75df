package jobtake

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// lease is a job a RunPod worker holds: the attempt it claimed and the
// ack subject of the job message's delivery.
type lease struct {
	JobID    string
	Attempt  int
	WorkerID string // the fleet's id of the worker
	// Taker is the worker's name as it appeared in its take URL; posts and
	// pings must come from the same name.
	Taker string
	Reply string // the delivery's ack subject
}

// heldBy reports whether a worker that names itself name in a URL holds
// the lease. A worker whose take template carried the literal
// "$RUNPOD_POD_ID" (§A.3) took the job under that name but posts under
// its real one; such a lease cannot be checked and is taken on trust.
func (l *lease) heldBy(name string) bool {
	return l.Taker == name || strings.Contains(l.Taker, "$")
}

// leaseStore keeps leases in Redis: a hash per job, a sorted set of
// deadlines (the sweeper's index) and a set of job ids per worker
// (job-stop's index). Every key sits under the fleet's key prefix.
type leaseStore struct {
	rdb    redis.UniversalClient
	prefix string
}

// leaseKeep bounds how long a lease's keys live should the host never
// settle them (the sweeper settles them long before).
const leaseKeep = 24 * time.Hour

func (s *leaseStore) key(job string) string      { return s.prefix + "cf:rp:lease:" + job }
func (s *leaseStore) deadlines() string          { return s.prefix + "cf:rp:leases" }
func (s *leaseStore) workerKey(id string) string { return s.prefix + "cf:rp:worker-jobs:" + id }
func millis(t time.Time) string                  { return strconv.FormatInt(t.UnixMilli(), 10) }

// put records a new lease with its first deadline, replacing an older
// lease of the job.
func (s *leaseStore) put(ctx context.Context, l lease, deadline time.Time) error {
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, s.key(l.JobID))
		p.HSet(ctx, s.key(l.JobID), "job", l.JobID, "attempt", l.Attempt, "worker", l.WorkerID, "taker", l.Taker, "reply", l.Reply)
		p.PExpire(ctx, s.key(l.JobID), leaseKeep)
		p.ZAdd(ctx, s.deadlines(), redis.Z{Score: float64(deadline.UnixMilli()), Member: l.JobID})
		p.SAdd(ctx, s.workerKey(l.WorkerID), l.JobID)
		p.PExpire(ctx, s.workerKey(l.WorkerID), leaseKeep)
		return nil
	})
	if err != nil {
		return fmt.Errorf("record lease of %s: %w", l.JobID, err)
	}
	return nil
}

var errNoLease = errors.New("no lease")

// get reads a job's lease; errNoLease when there is none.
func (s *leaseStore) get(ctx context.Context, job string) (*lease, error) {
	h, err := s.rdb.HGetAll(ctx, s.key(job)).Result()
	if err != nil {
		return nil, fmt.Errorf("read lease of %s: %w", job, err)
	}
	if len(h) == 0 {
		return nil, errNoLease
	}
	attempt, err := strconv.Atoi(h["attempt"])
	if err != nil || h["reply"] == "" {
		return nil, fmt.Errorf("read lease of %s: the lease is corrupt", job)
	}
	return &lease{JobID: job, Attempt: attempt, WorkerID: h["worker"], Taker: h["taker"], Reply: h["reply"]}, nil
}

// renew moves a lease's deadline; false when the job has no lease.
var renewScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return 1
`)

func (s *leaseStore) renew(ctx context.Context, job string, deadline time.Time) (bool, error) {
	n, err := renewScript.Run(ctx, s.rdb, []string{s.key(job), s.deadlines()}, deadline.UnixMilli(), job).Int()
	if err != nil {
		return false, fmt.Errorf("renew lease of %s: %w", job, err)
	}
	return n == 1, nil
}

// drop removes the lease l if the job's lease is still l's attempt
// (another attempt's lease is left alone).
var dropScript = redis.NewScript(`
local a = redis.call('HGET', KEYS[1], 'attempt')
if a and a ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('SREM', KEYS[3], ARGV[2])
return 1
`)

func (s *leaseStore) drop(ctx context.Context, l *lease) error {
	err := dropScript.Run(ctx, s.rdb, []string{s.key(l.JobID), s.deadlines(), s.workerKey(l.WorkerID)}, strconv.Itoa(l.Attempt), l.JobID).Err()
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("drop lease of %s: %w", l.JobID, err)
	}
	return nil
}

// expired lists up to n jobs whose lease deadline passed.
func (s *leaseStore) expired(ctx context.Context, now time.Time, n int64) ([]string, error) {
	ids, err := s.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{Key: s.deadlines(), Start: "-inf", Stop: millis(now), ByScore: true, Count: n}).Result()
	if err != nil {
		return nil, fmt.Errorf("list expired leases: %w", err)
	}
	return ids, nil
}

// forget removes a job from the deadline index only (no lease behind it).
func (s *leaseStore) forget(ctx context.Context, job string) error {
	return s.rdb.ZRem(ctx, s.deadlines(), job).Err()
}

// held lists the jobs leased to a worker.
func (s *leaseStore) held(ctx context.Context, workerID string) ([]string, error) {
	ids, err := s.rdb.SMembers(ctx, s.workerKey(workerID)).Result()
	if err != nil {
		return nil, fmt.Errorf("list jobs of worker %s: %w", workerID, err)
	}
	return ids, nil
}
