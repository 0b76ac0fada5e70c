-- Queue again the retries whose backoff is over.
-- KEYS: delayed set. ARGV: now unix ms, most to move, job key prefix, queue prefix.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  local job_key = ARGV[3] .. id
  if redis.call('HGET', job_key, 'state') == 'delayed' then
    redis.call('HSET', job_key, 'state', 'queued', 'entry', '')
    requeue_job(ARGV[4], job_key, id)
  end
end
return #due
