-- `guild jobs retry ID`: a dead job goes back in the queue with fresh attempts.
-- KEYS: stream, job hash, result, dead stream. ARGV: id.
-- Returns 1, or 0 when the job is not dead (or has expired).
if redis.call('HGET', KEYS[2], 'state') ~= 'dead' then
  return 0
end
local dead_entry = redis.call('HGET', KEYS[2], 'dead_entry')
if dead_entry then
  redis.call('XDEL', KEYS[4], dead_entry)
end
redis.call('DEL', KEYS[3])
local entry = redis.call('XADD', KEYS[1], '*', 'job', ARGV[1])
redis.call('HSET', KEYS[2], 'state', 'queued', 'attempts', 0, 'entry', entry, 'worker', '')
redis.call('HDEL', KEYS[2], 'dead_entry')
redis.call('PERSIST', KEYS[2])
local idem = redis.call('HGET', KEYS[2], 'idem')
if idem and idem ~= '' then
  redis.call('PERSIST', idem)
end
return 1
