-- `guild jobs retry ID`: a dead job goes back in the queue with fresh attempts, any cancel
-- request of its earlier life forgotten.
-- KEYS: job hash, result, dead stream. ARGV: id, queue prefix.
-- Returns 1, or 0 when the job is not dead (or has expired).
if redis.call('HGET', KEYS[1], 'state') ~= 'dead' then
  return 0
end
local dead_entry = redis.call('HGET', KEYS[1], 'dead_entry')
if dead_entry then
  redis.call('XDEL', KEYS[3], dead_entry)
end
redis.call('DEL', KEYS[2])
-- An operator's retry is a fresh decision: a cancel asked of the job before it died is forgotten.
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', 0, 'entry', '', 'worker', '', 'cancel', 0)
redis.call('DEL', ARGV[2] .. 'cancel:' .. ARGV[1])
redis.call('HDEL', KEYS[1], 'dead_entry')
redis.call('PERSIST', KEYS[1])
local idem = redis.call('HGET', KEYS[1], 'idem')
if idem and idem ~= '' then
  redis.call('PERSIST', idem)
end
requeue_job(ARGV[2], KEYS[1], ARGV[1])
return 1
