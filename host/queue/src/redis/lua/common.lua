-- Shared by every script (prepended by redis.rs). Keys of one queue share a hash tag, so they
-- sit in one slot of a Redis Cluster; job keys are built from the prefix passed in ARGV.
local GROUP = 'workers'

-- Keep a finished job's result where every node can read it, for `ttl` seconds. `idem`: the
-- job's idempotency key field when the caller read it already (else it is read here).
local function keep_result(result_key, job_key, result_json, state, ttl, idem)
  redis.call('SET', result_key, result_json, 'EX', ttl)
  redis.call('HSET', job_key, 'state', state, 'worker', '')
  redis.call('EXPIRE', job_key, ttl)
  if idem == nil then
    idem = redis.call('HGET', job_key, 'idem')
  end
  if idem and idem ~= '' then
    redis.call('EXPIRE', idem, ttl)
  end
end

-- Does `worker` hold the lease on the job through `entry`? Also returns the job's fields
-- state, worker, entry and idem (its idempotency key).
local function holds(job_key, entry, worker)
  local fields = redis.call('HMGET', job_key, 'state', 'worker', 'entry', 'idem')
  return fields[1] == 'running' and fields[2] == worker and fields[3] == entry, fields
end

-- Settle a stream entry nobody else holds: acknowledged and removed.
local function settle(stream, entry)
  redis.call('XACK', stream, GROUP, entry)
  redis.call('XDEL', stream, entry)
end
-- Capability lanes and fair turns (`lanes.rs`). Under `prefix` (the queue's `guild:{q}:`):
-- `lane:<len>:<lane>:priorities` (sorted set of the priorities with queued jobs), then per
-- priority `…:p<n>:tenants` (list: the tenants with queued jobs, in turn order) and
-- `…:p<n>:credit` (hash: what a tenant of weight above 1 at the front may still take this turn,
-- read as at most its weight; dropped when a submit changes the weight), per tenant
-- `…:t:<len>:<tenant>:agents` (list: its agent labels with queued jobs, in turn order) and per
-- agent `…:a:<agent>` (list: job ids, oldest first). A list is in its parent's list exactly
-- while it is not empty. `lanes:depth` (hash: lane → jobs queued), `wake:<lane>` (list: a few
-- tokens a waiting worker blocks on).
local WAKE_TOKENS_MAX = 64
local function lane_key(prefix, lane)
  return prefix .. 'lane:' .. #lane .. ':' .. lane
end
-- Where a lane's turns at priority `prio` live (`l`: the lane's key).
local function turns_key(l, prio)
  return l .. ':p' .. prio
end
local function tenant_key(base, tenant)
  return base .. ':t:' .. #tenant .. ':' .. tenant
end
-- Queue job `id` in its lane, at its priority, behind its tenant's and agent's earlier jobs.
local function enqueue(prefix, id, lane, prio, tenant, agent)
  local l = lane_key(prefix, lane)
  local base = turns_key(l, prio)
  local t = tenant_key(base, tenant)
  if redis.call('RPUSH', t .. ':a:' .. agent, id) == 1
    and redis.call('RPUSH', t .. ':agents', agent) == 1
    and redis.call('RPUSH', base .. ':tenants', tenant) == 1 then
    redis.call('ZADD', l .. ':priorities', prio, prio)
  end
  redis.call('HINCRBY', prefix .. 'lanes:depth', lane, 1)
  local wake = prefix .. 'wake:' .. lane
  redis.call('RPUSH', wake, 1)
  redis.call('LTRIM', wake, -WAKE_TOKENS_MAX, -1)
end
-- Queue a job again from what its hash says (a retry, a dead job sent back).
local function requeue_job(prefix, job_key, id)
  local f = redis.call('HMGET', job_key, 'lane', 'prio', 'tenant', 'agent')
  enqueue(prefix, id, f[1] or 'default', f[2] or '4', f[3] or '', f[4] or '')
end
-- Now, ms since the epoch, by Redis's clock: every due time in the delayed set is on it, so
-- machines whose clocks disagree do not move a job's turn.
local function redis_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Queue again the jobs of the delayed set (`delayed`: retries backing off, runs held to a run
-- limit's turn) whose time has come, at most `most`; how many, and whether the set was empty.
-- One command when none is due (the set's earliest entry looked at).
local function promote_due(prefix, jobs, most)
  local delayed = prefix .. 'delayed'
  local earliest = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  if not earliest[2] then
    return 0, true
  end
  local now = redis_now_ms()
  if tonumber(earliest[2]) > now then
    return 0, false
  end
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, most)
  for _, id in ipairs(due) do
    redis.call('ZREM', delayed, id)
    local job_key = jobs .. id
    if redis.call('HGET', job_key, 'state') == 'delayed' then
      redis.call('HSET', job_key, 'state', 'queued', 'entry', '')
      requeue_job(prefix, job_key, id)
    end
  end
  return #due, false
end
