-- transition.lua makes every change to a job's status record, atomically.
-- It must run on Redis (Lua 5.1) and on miniredis (gopher-lua): plain
-- redis.call only, no cjson, no TIME (the caller passes "now").
--
-- KEYS[1]  the record's hash
-- KEYS[2]  the fleet's counters hash: terminal statuses and retries, by name
-- ARGV[1]  operation: create | reject | claim | requeue | finish | expire |
--          cancel | cancelqueued | retry
-- ARGV[2]  now, Unix milliseconds
-- ARGV[3]  retention in ms for a record that lacks a valid retention_ms
-- ARGV[4]  expiry in ms for a record that lacks a valid ttl_ms
-- ARGV[5]  the job id (the record's id field must match it)
-- ARGV[6…] the operation's arguments:
--   create, reject  pool, lane, source, batch_id, submitted_at,
--                   retention_ms, ttl_ms, error (reject only)
--   claim           worker_id
--   requeue         attempt, reason
--   finish          attempt, status, output, error
--   expire          error
--   cancel          (none)
--   cancelqueued    (none): cancel only while IN_QUEUE (RunPod's purge-queue)
--   retry           (none)
--
-- Reply: {code, field1, value1, …}: a result code followed by the record as
-- HGETALL gives it after the call. Codes: ok, exists (create found a record),
-- notfound (no record; nothing follows), stale (the attempt is not the one
-- holding the job), terminal (the record is final), illegal (the operation
-- does not apply to this status), corrupt (a field the reader checks cannot
-- be read; nothing was changed). The output field's JSON is not checked here:
-- only the reader does that.

local key = KEYS[1]
local op = ARGV[1]
local now = ARGV[2]
local id = ARGV[5]

local function reply(code)
  local r = redis.call('HGETALL', key)
  table.insert(r, 1, code)
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

-- millis reads a positive duration field, or gives the default.
local function millis(v, default)
  local n = count(v)
  if n == nil or n <= 0 then return default end
  return v
end

local terminal = {COMPLETED = true, FAILED = true, CANCELLED = true, TIMED_OUT = true}

if op == 'create' or op == 'reject' then
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'id', id, 'status', 'IN_QUEUE', 'attempt', '0', 'retries', '0',
      'submitted_at', ARGV[10], 'retention_ms', ARGV[11], 'ttl_ms', ARGV[12])
    setopt('pool', ARGV[6])
    setopt('lane', ARGV[7])
    setopt('source', ARGV[8])
    setopt('batch_id', ARGV[9])
    if op == 'create' then
      redis.call('PEXPIRE', key, ARGV[12])
      return reply('ok')
    end
    -- reject goes on from IN_QUEUE to FAILED below.
  elseif op == 'create' then
    return reply('exists')
  end
end

if redis.call('EXISTS', key) == 0 then
  return {'notfound'}
end
local cur = redis.call('HMGET', key, 'id', 'status', 'attempt', 'retries', 'lane',
  'submitted_at', 'started_at', 'finished_at', 'retention_ms', 'ttl_ms', 'finished_attempt')
local status = cur[2]
local attempt = count(cur[3])
local retries = count(cur[4])
local lane = cur[5]
-- Refuse to build on a record the reader would reject (decodeRecord).
if cur[1] ~= id or not status or attempt == nil or retries == nil or
    not (terminal[status] or status == 'IN_QUEUE' or status == 'IN_PROGRESS') or
    (lane and lane ~= '' and lane ~= 'interactive' and lane ~= 'batch') or
    count(cur[6]) == nil or count(cur[7]) == nil or count(cur[8]) == nil then
  return reply('corrupt')
end
local retention = millis(cur[9], ARGV[3])
local ttl = millis(cur[10], ARGV[4])

-- fence checks that the caller's attempt still holds the job.
local function fence(a)
  if tonumber(a) ~= attempt then return 'stale' end
  if terminal[status] then return 'terminal' end
  if status ~= 'IN_PROGRESS' then return 'stale' end -- given back by Requeue
  return nil
end

-- final moves the record to a terminal state and starts its retention.
local function final(to, err)
  redis.call('HSET', key, 'status', to, 'finished_at', now)
  redis.call('HINCRBY', KEYS[2], to, 1)
  setopt('error', err)
  redis.call('PEXPIRE', key, retention)
  return reply('ok')
end

if op == 'claim' then
  if terminal[status] then return reply('terminal') end
  if status == 'IN_PROGRESS' then
    -- A redelivery: the previous attempt never reported; this is a retry.
    retries = retries + 1
  end
  redis.call('HSET', key, 'status', 'IN_PROGRESS', 'attempt', tostring(attempt + 1),
    'retries', tostring(retries), 'worker_id', ARGV[6], 'started_at', now)
  redis.call('PEXPIRE', key, ttl)
  return reply('ok')
end

if op == 'requeue' then
  local code = fence(ARGV[6])
  if code then return reply(code) end
  redis.call('HSET', key, 'status', 'IN_QUEUE', 'retries', tostring(retries + 1))
  redis.call('HDEL', key, 'worker_id', 'started_at')
  setopt('requeue_reason', ARGV[7])
  redis.call('PEXPIRE', key, ttl)
  return reply('ok')
end

if op == 'finish' then
  local to = ARGV[7]
  if to ~= 'COMPLETED' and to ~= 'FAILED' and to ~= 'TIMED_OUT' then return reply('illegal') end
  if status == to and cur[11] == ARGV[6] then
    -- This attempt's Finish landed already and is being retried (its reply
    -- was lost): succeed without writing again.
    return reply('ok')
  end
  local code = fence(ARGV[6])
  if code then return reply(code) end
  setopt('output', ARGV[8])
  redis.call('HSET', key, 'finished_attempt', ARGV[6])
  return final(to, ARGV[9])
end

if op == 'expire' then
  if terminal[status] then return reply('terminal') end
  if status ~= 'IN_QUEUE' then return reply('illegal') end
  return final('TIMED_OUT', ARGV[6])
end

if op == 'cancel' then
  if terminal[status] then return reply('terminal') end
  return final('CANCELLED', '')
end

if op == 'cancelqueued' then
  if terminal[status] then return reply('terminal') end
  if status ~= 'IN_QUEUE' then return reply('illegal') end
  return final('CANCELLED', '')
end

if op == 'reject' then
  if terminal[status] then return reply('terminal') end
  return final('FAILED', ARGV[13])
end

if op == 'retry' then
  if status ~= 'FAILED' and status ~= 'TIMED_OUT' then return reply('illegal') end
  redis.call('HSET', key, 'status', 'IN_QUEUE', 'retries', tostring(retries + 1), 'submitted_at', now)
  redis.call('HINCRBY', KEYS[2], 'RETRIED', 1)
  redis.call('HDEL', key, 'output', 'error', 'worker_id', 'started_at', 'finished_at', 'finished_attempt')
  redis.call('PEXPIRE', key, ttl)
  return reply('ok')
end

return redis.error_reply('unknown operation ' .. tostring(op))
