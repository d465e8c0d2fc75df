-- transition.lua makes every change to a job's state, atomically: its
-- status record, its lease, its place in the TTL index, its attempt log and
-- the fleet's counters move together or not at all. It runs on Redis 7
-- (Lua 5.1) and on miniredis (gopher-lua): plain redis.call only, no cjson.
-- Every time comes from Redis's own clock (TIME), so hosts whose clocks
-- disagree never disagree about a lease or a delay.
--
-- KEYS[1]  the record's hash            (proto.JobKey)
-- KEYS[2]  the fleet's counters hash    (proto.StatsKey)
-- KEYS[3]  the job's lease hash         (proto.LeaseKey)
-- KEYS[4]  the leases by expiry         (proto.LeasesKey)
-- KEYS[5]  the TTL index                (proto.TTLKey)
-- KEYS[6]  the job's attempt log        (proto.AttemptsKey)
-- KEYS[7]  the kept requests' index     (proto.KeptKey)
-- KEYS[8]  the recent jobs' index        (proto.RecentKey)
-- KEYS[9]  the prefix of the per-minute end counters (proto.RateKey
--          without the minute): not a key itself
-- KEYS[10] the prefix of the per-pool counters (proto.PoolStatsKey
--          without the pool): not a key itself
-- KEYS[11] the prefix of the tenants' active jobs (proto.ActiveKey
--          without the tenant): not a key itself
-- ARGV[1]  operation
-- ARGV[2]  the job id (the record's id field must match it)
-- ARGV[3]  the name of a worker's held set (proto.HeldKey) without the
--          worker id, which the lease gives
-- ARGV[4…] the operation's arguments, named below.
--
-- Reply: {code, n, field1, value1, …}: a result code, a number whose
-- meaning depends on the operation (0 when it has none), and the record as
-- HGETALL gives it after the call, then, for claim and reclaim, the lease
-- fields after a "" separator. Codes: ok, created, same, exists (admit),
-- rejected, notfound (nothing follows), stale (the attempt is not the one
-- holding the job), terminal, illegal (the operation does not apply to the
-- status), held (a live lease of another attempt), expired (the TTL ran out
-- at claim), lost (renew: the lease is gone), exhausted (requeue: the
-- attempts are used up), notdue, skip, corrupt (a field the reader checks
-- cannot be read; nothing was changed).

local key, stats, leasekey, leases, ttlidx, attempts, keptidx, recent, ratePrefix, poolStatsPrefix, activePrefix = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local op, id, heldPrefix = ARGV[1], ARGV[2], ARGV[3]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nows = string.format('%d', now)

-- Every key a non-terminal record owns expires after its TTL plus this
-- slack, counted from its last transition, so that a job whose every
-- process died still leaves no key forever; the sweeper finds it first.
local slack = 3600000
local leaseKeep = 86400000
local recentCap = 10000 -- proto.RecentJobsCap

local function reply(code, n, extra)
  local r = redis.call('HGETALL', key)
  table.insert(r, 1, n or 0)
  table.insert(r, 1, code)
  if extra then
    table.insert(r, '')
    for _, v in ipairs(extra) do table.insert(r, v) end
  end
  return r
end

-- setopt sets an optional field, or deletes it when the value is empty, so
-- the hash holds only what is known.
local function setopt(field, value)
  if value == nil or value == '' then
    redis.call('HDEL', key, field)
  else
    redis.call('HSET', key, field, value)
  end
end

-- count reads a non-negative integer field (absent is 0); nil if corrupt.
-- At most 15 digits, so the number stays exact and prints without exponent.
local function count(v)
  if not v then return 0 end
  if not string.match(v, '^%d+$') or string.len(v) > 15 then return nil end
  return tonumber(v)
end

local function fmt(n) return string.format('%d', n) end

local terminal = {COMPLETED = true, FAILED = true, CANCELLED = true, TIMED_OUT = true}

-- final moves the record to a terminal state, starts its retention and
-- takes it out of the TTL index. A job whose request is kept for /retry
-- (it holds the job's secrets) goes into the kept index for when the
-- retention ends: a sweeper then removes the copy. Every terminal
-- transition goes through here, so none forgets it.
local function final(to, err, retention)
  redis.call('HSET', key, 'status', to, 'finished_at', nows)
  redis.call('HINCRBY', stats, to, 1)
  -- jobs ended per lane and minute (Redis's), for the fleet's jobs/min
  local where = redis.call('HMGET', key, 'pool', 'lane')
  if where[1] then redis.call('HINCRBY', poolStatsPrefix .. where[1], to, 1) end
  local rate = ratePrefix .. fmt(math.floor(now / 60000))
  redis.call('HINCRBY', rate, (where[1] or '') .. '/' .. (where[2] or ''), 1)
  redis.call('PEXPIRE', rate, 180000)
  setopt('error', err)
  redis.call('PEXPIRE', key, retention)
  redis.call('ZREM', ttlidx, id)
  -- its place under its tenant's concurrency cap is free
  redis.call('ZREM', activePrefix .. (redis.call('HGET', key, 'tenant') or 'default'), id)
  if redis.call('HGET', key, 'kept') == '1' then
    redis.call('ZADD', keptidx, fmt(now + tonumber(retention)), id)
  end
end

-- dropLease removes the job's lease if it belongs to attempt a (any
-- attempt when a is nil).
local function dropLease(a)
  local h = redis.call('HMGET', leasekey, 'attempt', 'worker_id')
  if h[1] and (a == nil or h[1] == tostring(a)) then
    redis.call('DEL', leasekey)
    redis.call('ZREM', leases, id)
    if h[2] then redis.call('SREM', heldPrefix .. h[2], id) end
    return true
  end
  if not h[1] then redis.call('ZREM', leases, id) end
  return false
end

-- logAttempt appends a failed attempt's error to the attempt log (not
-- twice in a row) and returns how many it holds.
local function logAttempt(entry, keep)
  local last = redis.call('LINDEX', attempts, -1)
  if last ~= entry then redis.call('RPUSH', attempts, entry) end
  redis.call('PEXPIRE', attempts, keep)
  return redis.call('LLEN', attempts)
end

-- create writes a new IN_QUEUE record.
local function create(intake, pool, lane, source, batch, retention, ttl, submitted, tenant, kept)
  redis.call('HSET', key, 'id', id, 'status', 'IN_QUEUE', 'attempt', '0', 'retries', '0',
    'submitted_at', submitted, 'retention_ms', retention, 'ttl_ms', ttl,
    'expires_at', fmt(tonumber(submitted) + tonumber(ttl)))
  setopt('intake', intake)
  setopt('pool', pool)
  setopt('lane', lane)
  setopt('source', source)
  setopt('tenant', tenant)
  setopt('batch_id', batch)
  if kept == '1' then redis.call('HSET', key, 'kept', '1') end
  redis.call('PEXPIRE', key, tonumber(ttl) + slack)
  -- The recent jobs' index, capped (proto.RecentJobsCap): the console's
  -- list. Capping costs O(log n) per job.
  redis.call('ZADD', recent, nows, id)
  redis.call('ZREMRANGEBYRANK', recent, 0, -(recentCap + 1))
end

if op == 'admit' or op == 'create' then
  -- admit and create: intake, pool, lane, source, batch_id, retention_ms,
  -- ttl_ms, reject (admit only), submitted_at (create only; 0: now),
  -- recreated (create only; 1: count it), tenant, kept (1: the request
  -- is kept for /retry)
  local intake, reject = ARGV[4], ARGV[11]
  if redis.call('EXISTS', key) == 0 then
    local submitted = nows
    -- a submission time from the message, never later than now (a
    -- producer's clock ahead of Redis's would give a negative delayTime)
    if op == 'create' and ARGV[12] ~= '0' and tonumber(ARGV[12]) < now then submitted = ARGV[12] end
    create(intake, ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], submitted, ARGV[14], ARGV[15])
    if op == 'create' and ARGV[13] == '1' then redis.call('HINCRBY', stats, 'RECREATED', 1) end
    if op == 'admit' and reject ~= '' then
      final('FAILED', reject, ARGV[9])
      return reply('rejected')
    end
    redis.call('ZADD', ttlidx, redis.call('HGET', key, 'expires_at'), id)
    return reply('created')
  end
  if op == 'create' or intake == '' or redis.call('HGET', key, 'intake') ~= intake then
    -- Another submission made this record: this one changes nothing.
    if op == 'admit' then redis.call('HINCRBY', stats, 'DUPLICATE', 1) end
    return reply('exists')
  end
  -- The redelivery of the submission that made the record.
  if reject ~= '' and redis.call('HGET', key, 'status') == 'IN_QUEUE' and
      redis.call('HGET', key, 'attempt') == '0' then
    local retention = redis.call('HGET', key, 'retention_ms')
    final('FAILED', reject, retention)
    return reply('rejected')
  end
  return reply('same')
end

if redis.call('EXISTS', key) == 0 then
  if op == 'reclaim' then
    -- The record expired under a lease: hand the delivery back, so that
    -- whoever gets it makes the record again from the message.
    local l = redis.call('HGETALL', leasekey)
    dropLease(nil)
    return {'notfound', 0, '', unpack(l)}
  end
  if op == 'expire' then redis.call('ZREM', ttlidx, id) end
  if op == 'renew' then return {'lost', 0} end
  return {'notfound', 0}
end

local cur = redis.call('HMGET', key, 'id', 'status', 'attempt', 'retries', 'lane',
  'submitted_at', 'started_at', 'finished_at', 'retention_ms', 'ttl_ms', 'finished_attempt',
  'expires_at', 'dlq')
local status = cur[2]
local attempt = count(cur[3])
local retries = count(cur[4])
local lane = cur[5]
-- Refuse to build on a record the reader would reject (decodeRecord).
if cur[1] ~= id or not status or attempt == nil or retries == nil or
    not (terminal[status] or status == 'IN_QUEUE' or status == 'IN_PROGRESS') or
    (lane and lane ~= '' and lane ~= 'interactive' and lane ~= 'batch') or
    count(cur[6]) == nil or count(cur[7]) == nil or count(cur[8]) == nil or
    count(cur[9]) == nil or count(cur[10]) == nil or count(cur[12]) == nil then
  return reply('corrupt')
end
local retention = tonumber(cur[9]) or 1800000
if retention <= 0 then retention = 1800000 end
local ttl = tonumber(cur[10]) or 86400000
if ttl <= 0 then ttl = 86400000 end
local expiresAt = tonumber(cur[12]) or 0

-- fence checks that the caller's attempt still holds the job.
local function fence(a)
  if tonumber(a) ~= attempt then return 'stale' end
  if terminal[status] then return 'terminal' end
  if status ~= 'IN_PROGRESS' then return 'stale' end -- given back
  return nil
end

-- requeue gives the job back to the queue: IN_QUEUE, one more retry, back
-- in the TTL index, lease gone.
local function requeue(reason)
  redis.call('HSET', key, 'status', 'IN_QUEUE', 'retries', fmt(retries + 1))
  redis.call('HDEL', key, 'worker_id', 'started_at')
  setopt('requeue_reason', reason)
  redis.call('PEXPIRE', key, ttl + slack)
  if expiresAt > 0 then redis.call('ZADD', ttlidx, expiresAt, id) end
  dropLease(attempt)
end

if op == 'claim' then
  -- worker_id, taker, reply, lease_ms, exec_ms (0: no deadline), the
  -- error of a job whose TTL ran out
  if terminal[status] then return reply('terminal', cur[13] == '1' and 1 or 0) end
  if status == 'IN_QUEUE' and expiresAt > 0 and now >= expiresAt then
    -- Past its TTL: it never reaches the GPU.
    final('TIMED_OUT', ARGV[9], retention)
    return reply('expired')
  end
  if status == 'IN_PROGRESS' then
    local l = redis.call('HMGET', leasekey, 'attempt')
    local exp = redis.call('ZSCORE', leases, id)
    if l[1] == tostring(attempt) and exp and tonumber(exp) > now then
      -- A live holder: this delivery is a duplicate (or came back too
      -- early); the caller gives it back for later.
      return reply('held', tonumber(exp) - now)
    end
    -- A redelivery: the previous attempt never reported; this is a retry.
    retries = retries + 1
    dropLease(nil)
  end
  local worker, execMs = ARGV[4], tonumber(ARGV[8])
  local deadline = 0
  if execMs > 0 then deadline = now + execMs end
  attempt = attempt + 1
  redis.call('HSET', key, 'status', 'IN_PROGRESS', 'attempt', fmt(attempt),
    'retries', fmt(retries), 'worker_id', worker, 'started_at', nows)
  redis.call('HDEL', key, 'requeue_reason')
  redis.call('PEXPIRE', key, ttl + slack)
  redis.call('ZREM', ttlidx, id)
  redis.call('DEL', leasekey)
  redis.call('HSET', leasekey, 'attempt', fmt(attempt), 'worker_id', worker, 'taker', ARGV[5],
    'reply', ARGV[6], 'deadline', fmt(deadline), 'lease_ms', ARGV[7])
  redis.call('PEXPIRE', leasekey, leaseKeep)
  redis.call('ZADD', leases, now + tonumber(ARGV[7]), id)
  local held = heldPrefix .. worker
  redis.call('SADD', held, id)
  redis.call('PEXPIRE', held, leaseKeep)
  return reply('ok', redis.call('LLEN', attempts), {'deadline', fmt(deadline)})
end

if op == 'renew' then
  -- attempt, lease_ms. An expired lease that nobody took yet comes back to
  -- life: a Redis outage shorter than the job costs it nothing.
  local a = ARGV[4]
  if terminal[status] then
    if tonumber(a) == attempt then return {'terminal', 0} end
    return {'lost', 0}
  end
  if status ~= 'IN_PROGRESS' or tonumber(a) ~= attempt or redis.call('HGET', leasekey, 'attempt') ~= a then
    return {'lost', 0}
  end
  redis.call('ZADD', leases, now + tonumber(ARGV[5]), id)
  redis.call('PEXPIRE', leasekey, leaseKeep)
  return {'ok', 0}
end

if op == 'requeue' then
  -- attempt, reason, counted (1: log it as a failed attempt), max_attempts
  -- (0: no bound), attempt_log_keep_ms
  local code = fence(ARGV[4])
  if code then return reply(code) end
  local failures = 0
  if ARGV[6] == '1' then
    failures = logAttempt('attempt ' .. ARGV[4] .. ': ' .. ARGV[5], tonumber(ARGV[8]))
    local maxa = tonumber(ARGV[7])
    if maxa > 0 and failures >= maxa then
      -- The last attempt failed: the caller finishes the job instead.
      return reply('exhausted', failures)
    end
  end
  requeue(ARGV[5])
  return reply('ok', failures)
end

if op == 'finish' then
  -- attempt, status, output, error, dead_letter (1: a dead letter is owed)
  local to = ARGV[5]
  if to ~= 'COMPLETED' and to ~= 'FAILED' and to ~= 'TIMED_OUT' then return reply('illegal') end
  if status == to and cur[11] == ARGV[4] then
    -- This attempt's Finish landed already and is being retried (its reply
    -- was lost): succeed without writing again.
    return reply('ok')
  end
  local code = fence(ARGV[4])
  if code then return reply(code) end
  setopt('output', ARGV[6])
  redis.call('HSET', key, 'finished_attempt', ARGV[4])
  if ARGV[8] == '1' then redis.call('HSET', key, 'dlq', '1') end
  final(to, ARGV[7], retention)
  dropLease(attempt)
  return reply('ok')
end

if op == 'deadlettered' then
  -- attempt: the dead letter of this attempt's Finish is durable.
  if cur[11] == ARGV[4] then redis.call('HDEL', key, 'dlq') end
  return reply('ok')
end

if op == 'release' then
  -- attempt: drop the lease of an attempt whose record ended elsewhere (a
  -- cancel), once its delivery is settled.
  dropLease(tonumber(ARGV[4]))
  return reply('ok')
end

if op == 'expire' then
  -- the error of a job whose TTL ran out: the sweeper's TTL check of a
  -- job in the TTL index.
  if status ~= 'IN_QUEUE' then
    redis.call('ZREM', ttlidx, id)
    if terminal[status] then return reply('terminal') end
    return reply('illegal')
  end
  if expiresAt > 0 and now < expiresAt then
    redis.call('ZADD', ttlidx, expiresAt, id)
    return reply('notdue')
  end
  final('TIMED_OUT', ARGV[4], retention)
  return reply('ok')
end

if op == 'cancel' or op == 'cancelqueued' then
  -- (none). A running job's lease stays: its worker stops on the cancel
  -- (or at its next renewal) and releases it; a dead worker's delivery is
  -- acked by the sweeper.
  if terminal[status] then return reply('terminal') end
  if op == 'cancelqueued' and status ~= 'IN_QUEUE' then return reply('illegal') end
  final('CANCELLED', '', retention)
  return reply('ok', status == 'IN_PROGRESS' and 1 or 0)
end

if op == 'fail' then
  -- attempt, error: a queued job that cannot run after all (its retry
  -- could not be published); fenced by the attempt the caller saw.
  if terminal[status] then return reply('terminal') end
  if status ~= 'IN_QUEUE' or tonumber(ARGV[4]) ~= attempt then return reply('stale') end
  final('FAILED', ARGV[5], retention)
  return reply('ok')
end

if op == 'retry' then
  -- (none): RunPod's /retry and the replay of a dead letter.
  if status ~= 'FAILED' and status ~= 'TIMED_OUT' then return reply('illegal') end
  redis.call('HSET', key, 'status', 'IN_QUEUE', 'retries', fmt(retries + 1), 'submitted_at', nows,
    'expires_at', fmt(now + ttl))
  redis.call('HINCRBY', stats, 'RETRIED', 1)
  local pool = redis.call('HGET', key, 'pool')
  if pool then redis.call('HINCRBY', poolStatsPrefix .. pool, 'RETRIED', 1) end
  redis.call('HDEL', key, 'output', 'error', 'worker_id', 'started_at', 'finished_at',
    'finished_attempt', 'dlq', 'requeue_reason', 'webhook')
  redis.call('PEXPIRE', key, ttl + slack)
  redis.call('ZADD', ttlidx, now + ttl, id)
  -- The retry keeps its request again, for as long as it lives; its end
  -- indexes it anew.
  redis.call('ZREM', keptidx, id)
  redis.call('DEL', attempts)
  dropLease(nil)
  return reply('ok')
end

if op == 'reclaim' then
  -- grace_ms, attempt_log_keep_ms, the error and output of a job timed out
  -- on a silent worker, the attempt-log reason of one handed back: the
  -- sweeper's step for a lapsed lease.
  local exp = redis.call('ZSCORE', leases, id)
  if not exp or tonumber(exp) > now then return reply('skip') end
  local l = redis.call('HGETALL', leasekey)
  local lh = {}
  for i = 1, #l, 2 do lh[l[i]] = l[i + 1] end
  dropLease(nil)
  if not lh['attempt'] then return reply('skip') end
  if terminal[status] then
    -- Ended, but its delivery was never settled: ack it, unless a dead
    -- letter is still owed (then whoever gets it next writes that).
    if cur[13] == '1' then return reply('nak', 0, l) end
    return reply('ack', 0, l)
  end
  if status == 'IN_QUEUE' then return reply('nak', 0, l) end
  if tonumber(lh['attempt']) ~= attempt then return reply('skip', 0, l) end
  local deadline = tonumber(lh['deadline']) or 0
  if deadline > 0 and now > deadline + tonumber(ARGV[4]) then
    setopt('output', ARGV[7])
    redis.call('HSET', key, 'finished_attempt', fmt(attempt))
    final('TIMED_OUT', ARGV[6], retention)
    return reply('timedout', 0, l)
  end
  local reason = ARGV[8]
  local failures = logAttempt('attempt ' .. fmt(attempt) .. ': ' .. reason, tonumber(ARGV[5]))
  requeue(reason)
  return reply('requeued', failures, l)
end

return redis.error_reply('unknown operation ' .. tostring(op))
