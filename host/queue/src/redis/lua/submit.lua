-- KEYS: stream, job hash, [idempotency key]
-- ARGV: id, body, tenant, tool, attempts_max, input digest, subject ('' for a static token)
-- Returns {1, id} for a new job, {0, first id} when the key (or the id) already names one.
if KEYS[3] then
  local existing = redis.call('GET', KEYS[3])
  if existing then
    return {0, existing}
  end
end
-- The same id twice (a client library retrying a submission it thinks was lost): one job.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {0, ARGV[1]}
end
if KEYS[3] then
  redis.call('SET', KEYS[3], ARGV[1])
end
local entry = redis.call('XADD', KEYS[1], '*', 'job', ARGV[1])
redis.call('HSET', KEYS[2], 'body', ARGV[2], 'state', 'queued', 'attempts', 0, 'attempts_max', ARGV[5],
  'tenant', ARGV[3], 'subject', ARGV[7], 'tool', ARGV[4], 'input', ARGV[6], 'entry', entry, 'idem', KEYS[3] or '',
  'worker', '')
return {1, ARGV[1]}
