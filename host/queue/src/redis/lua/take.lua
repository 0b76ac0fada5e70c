-- A worker takes up to `count` jobs from the lanes it serves, and starts them: the highest
-- priority queued in any of those lanes first (ties: the lane listed first), then the tenant
-- whose turn it is (it keeps the turn for its weight's worth of jobs), then that tenant's agent
-- whose turn it is. Each job taken gets a stream entry leased to the worker (its pending entry),
-- renewed and reclaimed as any other.
-- Jobs in the delayed set whose time has come are queued first.
-- KEYS: stream, stats, delayed set
-- ARGV: worker, queue prefix, job key prefix, count, then the lanes served
-- Returns {jobs, next}: per job to run {entry, body, attempt, id, cancel} (a body the hash lacks
-- is ''; cancel 1 when `cancel:<id>` asks for it to be cancelled, so the worker need not ask),
-- and in how many ms the delayed set's next job is due (-1: none).
local worker, prefix, jobs = ARGV[1], ARGV[2], ARGV[3]
local count = tonumber(ARGV[4])
local _, none_delayed = promote_due(prefix, jobs, count + 64)
local weights = prefix .. 'weights'
local out = {}
-- Ids popped whose job is gone or no longer queued are skipped; bounded all the same.
local looked = 0
while #out < count and looked < count + 64 do
  looked = looked + 1
  local lane, prio = nil, nil
  for i = 5, #ARGV do
    local top = redis.call('ZREVRANGE', lane_key(prefix, ARGV[i]) .. ':priorities', 0, 0, 'WITHSCORES')
    if top[1] and (prio == nil or tonumber(top[2]) > prio) then
      lane, prio = ARGV[i], tonumber(top[2])
    end
  end
  if not lane then
    break
  end
  local l = lane_key(prefix, lane)
  local base = l .. ':p' .. prio
  local tenants = base .. ':tenants'
  local tenant = redis.call('LINDEX', tenants, 0)
  if not tenant then
    redis.call('ZREM', l .. ':priorities', prio)
  else
    local t = tenant_key(base, tenant)
    local agents = t .. ':agents'
    local agent = redis.call('LINDEX', agents, 0)
    local id = nil
    if agent then
      local a = t .. ':a:' .. agent
      id = redis.call('LPOP', a)
      if redis.call('LLEN', a) == 0 then
        redis.call('LPOP', agents)
      else
        redis.call('LMOVE', agents, agents, 'LEFT', 'RIGHT')
      end
    end
    local credits = base .. ':credit'
    if redis.call('LLEN', agents) == 0 then
      redis.call('LPOP', tenants)
      redis.call('HDEL', credits, tenant)
      if redis.call('LLEN', tenants) == 0 then
        redis.call('ZREM', l .. ':priorities', prio)
      end
    else
      local credit = redis.call('HGET', credits, tenant) or redis.call('HGET', weights, tenant) or '1'
      credit = tonumber(credit) - 1
      if credit <= 0 then
        redis.call('LMOVE', tenants, tenants, 'LEFT', 'RIGHT')
        redis.call('HDEL', credits, tenant)
      else
        redis.call('HSET', credits, tenant, credit)
      end
    end
    if id then
      redis.call('HINCRBY', prefix .. 'lanes:depth', lane, -1)
      local job_key = jobs .. id
      local fields = redis.call('HMGET', job_key, 'state', 'body', 'attempts')
      if fields[1] == 'queued' then
        local entry = redis.call('XADD', KEYS[1], '*', 'job', id)
        local leased = redis.pcall('XCLAIM', KEYS[1], GROUP, worker, 0, entry, 'FORCE', 'JUSTID')
        if type(leased) == 'table' and leased.err then
          -- No consumer group (a Redis that lost it): the job goes back to its lane, untouched,
          -- and the worker is told, so it makes the group again.
          redis.call('XDEL', KEYS[1], entry)
          requeue_job(prefix, job_key, id)
          return redis.error_reply(leased.err)
        end
        local attempt = tonumber(fields[3] or '0') + 1
        redis.call('HSET', job_key, 'state', 'running', 'worker', worker, 'entry', entry, 'attempts', attempt)
        local cancel = redis.call('EXISTS', prefix .. 'cancel:' .. id)
        table.insert(out, {entry, fields[2] or '', attempt, id, cancel})
      end
    end
  end
end
if none_delayed then
  return {out, -1}
end
local next_due = redis.call('ZRANGE', prefix .. 'delayed', 0, 0, 'WITHSCORES')
if next_due[2] then
  return {out, math.max(0, tonumber(next_due[2]) - redis_now_ms())}
end
return {out, -1}
