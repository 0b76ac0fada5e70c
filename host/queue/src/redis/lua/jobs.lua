-- Taking and completing jobs: shared by `take.lua`, `complete.lua` and `complete_take.lua`
-- (prepended after `common.lua`).

-- A worker takes up to `count` jobs from `lanes` (the lanes it serves), and starts them: the
-- highest priority queued in any of those lanes first (ties: the lane listed first), then the
-- tenant whose turn it is (it keeps the turn for its weight's worth of jobs), then that
-- tenant's agent whose turn it is. Each job taken gets an entry in `stream` leased to the
-- worker (its pending entry), renewed and reclaimed as any other.
-- Jobs in the delayed set whose time has come are queued first.
-- Returns {jobs, next}: per job to run {entry, body, attempt, id, cancel} (a body the hash lacks
-- is ''; cancel 1 when the job's hash says a cancel was asked for, or, for a hash an earlier
-- version wrote, its `cancel:<id>` key does: the worker need not ask), and in how many ms the
-- delayed set's next job is due (-1: none); or an error reply when the stream has no consumer
-- group (the job it was taking is back in its lane, untouched).
local function take_jobs(stream, worker, prefix, jobs, count, lanes)
  local _, none_delayed = promote_due(prefix, jobs, count + 64)
  local weights = prefix .. 'weights'
  local out = {}
  -- Ids popped whose job is gone or no longer queued are skipped; bounded all the same.
  local looked = 0
  while #out < count and looked < count + 64 do
    looked = looked + 1
    local lane, prio = nil, nil
    for _, served in ipairs(lanes) do
      local top = redis.call('ZREVRANGE', lane_key(prefix, served) .. ':priorities', 0, 0, 'WITHSCORES')
      if top[1] and (prio == nil or tonumber(top[2]) > prio) then
        lane, prio = served, tonumber(top[2])
      end
    end
    if not lane then
      break
    end
    local l = lane_key(prefix, lane)
    local base = turns_key(l, prio)
    local tenants = base .. ':tenants'
    -- The tenant whose turn it is, moved to the back of the line at once: most tenants have
    -- weight 1 and their turn ends with this job; one whose turn goes on is put back in front.
    local tenant = redis.call('LMOVE', tenants, tenants, 'LEFT', 'RIGHT')
    if not tenant then
      redis.call('ZREM', l .. ':priorities', prio)
    else
      local t = tenant_key(base, tenant)
      local agents = t .. ':agents'
      -- The same for the tenant's agents: the one served goes to the back, and leaves the line
      -- (from the back) when it has no job left.
      local agent = redis.call('LMOVE', agents, agents, 'LEFT', 'RIGHT')
      local id = nil
      -- Whether the tenant still has an agent with jobs here: known without asking Redis when
      -- the agent just served keeps jobs (its line is not empty).
      local agents_left = false
      if agent then
        local a = t .. ':a:' .. agent
        id = redis.call('LPOP', a)
        if redis.call('LLEN', a) == 0 then
          redis.call('RPOP', agents)
          agents_left = redis.call('LLEN', agents) > 0
        else
          agents_left = true
        end
      end
      local credits = base .. ':credit'
      if not agents_left then
        redis.call('RPOP', tenants)
        redis.call('HDEL', credits, tenant)
        if redis.call('LLEN', tenants) == 0 then
          redis.call('ZREM', l .. ':priorities', prio)
        end
      else
        -- A turn's credit is kept only while at least one job of the turn is left, and only for
        -- a tenant of weight above 1: one of weight 1 (most) reads nothing more.
        local weight = tonumber(redis.call('HGET', weights, tenant) or '1') or 1
        if weight > 1 then
          -- A credit kept while the weight was higher (it changes with each submit) is capped:
          -- a turn is never longer than the weight the tenant has now.
          local kept = redis.call('HGET', credits, tenant)
          local credit = math.min(tonumber(kept) or weight, weight) - 1
          if credit <= 0 then
            if kept then
              redis.call('HDEL', credits, tenant)
            end
          else
            redis.call('HSET', credits, tenant, credit)
            redis.call('LMOVE', tenants, tenants, 'RIGHT', 'LEFT')
          end
        end
      end
      if id then
        redis.call('HINCRBY', prefix .. 'lanes:depth', lane, -1)
        local job_key = jobs .. id
        local fields = redis.call('HMGET', job_key, 'state', 'body', 'attempts', 'cancel')
        if fields[1] == 'queued' then
          -- A count that does not parse is taken as none: the script must not fail halfway (what
          -- it wrote before an error stays written), and the attempt still runs.
          local attempt = (tonumber(fields[3] or '0') or 0) + 1
          local entry = redis.call('XADD', stream, '*', 'job', id)
          local leased = redis.pcall('XCLAIM', stream, GROUP, worker, 0, entry, 'FORCE', 'JUSTID')
          if type(leased) == 'table' and leased.err then
            -- No consumer group (a Redis that lost it): the job goes back to its lane, untouched,
            -- and the worker is told, so it makes the group again.
            redis.call('XDEL', stream, entry)
            requeue_job(prefix, job_key, id)
            return redis.error_reply(leased.err)
          end
          redis.call('HSET', job_key, 'state', 'running', 'worker', worker, 'entry', entry, 'attempts', attempt)
          -- `cancel` is '0' or '1' in a hash this version's submit wrote; a hash an earlier
          -- version wrote lacks it, and its cancel request is the `cancel:<id>` key alone.
          local cancel = fields[4] == '1' and 1 or 0
          if not fields[4] then
            cancel = redis.call('EXISTS', prefix .. 'cancel:' .. id)
          end
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
end

-- Settle an attempt that finished with `result` (its JSON; `audited`: the same without the
-- output, for the done stream: the audit trail never reads the output, and its readers take
-- entries in batches), if `worker` still holds the job's lease through `entry`.
-- Returns 'recorded' when this attempt's result became the job's, 'duplicate' otherwise.
local function complete_job(stream, job_key, result_key, done, stats, entry, worker, result, ttl, done_kept, channel,
                            id, audited)
  local mine, fields = holds(job_key, entry, worker)
  if mine then
    settle(stream, entry)
    keep_result(result_key, job_key, result, 'done', tonumber(ttl), fields[4] or '')
    redis.call('XADD', done, 'MAXLEN', '~', done_kept, '*', 'kind', 'completed', 'result', audited)
    redis.call('HINCRBY', stats, 'completed', 1)
    redis.call('PUBLISH', channel, id)
    return 'recorded'
  end
  -- Another worker holds this very entry (it took over the lapsed lease): leave its lease alone.
  if not (fields[1] == 'running' and fields[3] == entry) then
    settle(stream, entry)
  end
  redis.call('XADD', done, 'MAXLEN', '~', done_kept, '*', 'kind', 'duplicate', 'result', audited)
  redis.call('HINCRBY', stats, 'duplicates', 1)
  return 'duplicate'
end
