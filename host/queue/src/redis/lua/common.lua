-- Shared by every script (prepended by redis.rs). Keys of one queue share a hash tag, so they
-- sit in one slot of a Redis Cluster; job keys are built from the prefix passed in ARGV.
local GROUP = 'workers'

-- Keep a finished job's result where every node can read it, for `ttl` seconds.
local function keep_result(result_key, job_key, result_json, state, ttl)
  redis.call('SET', result_key, result_json, 'EX', ttl)
  redis.call('HSET', job_key, 'state', state, 'worker', '')
  redis.call('EXPIRE', job_key, ttl)
  local idem = redis.call('HGET', job_key, 'idem')
  if idem and idem ~= '' then
    redis.call('EXPIRE', idem, ttl)
  end
end

-- Does `worker` hold the lease on the job through `entry`?
local function holds(job_key, entry, worker)
  local fields = redis.call('HMGET', job_key, 'state', 'worker', 'entry')
  return fields[1] == 'running' and fields[2] == worker and fields[3] == entry, fields
end

-- Settle a stream entry nobody else holds: acknowledged and removed.
local function settle(stream, entry)
  redis.call('XACK', stream, GROUP, entry)
  redis.call('XDEL', stream, entry)
end
