-- Move retries whose backoff is over back into the stream.
-- KEYS: delayed set, stream. ARGV: now unix ms, most to move, job key prefix.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  local job_key = ARGV[3] .. id
  if redis.call('HGET', job_key, 'state') == 'delayed' then
    local entry = redis.call('XADD', KEYS[2], '*', 'job', id)
    redis.call('HSET', job_key, 'state', 'queued', 'entry', entry)
  end
end
return #due
