-- KEYS: stream, job hash, [idempotency key]
-- ARGV: id, body, tenant, tool, attempts_max, input digest, subject ('' for a static token),
--       queue prefix, lane, lane needs json, priority, agent ('' for none), tenant weight,
--       lanes at most, delay (ms: held to a run limit's turn; 0: none)
-- Returns {1, id} for a new job, {0, first id} when the key (or the id) already names one;
-- an error naming LANES_MAX when the job's lane would be one too many.
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
local prefix, lane = ARGV[8], ARGV[9]
local lanes = prefix .. 'lanes'
if redis.call('HEXISTS', lanes, lane) == 0 then
  if redis.call('HLEN', lanes) >= tonumber(ARGV[14]) then
    return redis.error_reply('LANES_MAX the queue holds ' .. ARGV[14] ..
      ' lanes (LANES_MAX): give fewer tools distinct needs, or use another queue')
  end
  redis.call('HSET', lanes, lane, ARGV[10])
end
if KEYS[3] then
  redis.call('SET', KEYS[3], ARGV[1])
end
redis.call('HSET', KEYS[2], 'body', ARGV[2], 'state', 'queued', 'attempts', 0, 'attempts_max', ARGV[5],
  'tenant', ARGV[3], 'subject', ARGV[7], 'tool', ARGV[4], 'input', ARGV[6], 'entry', '', 'idem', KEYS[3] or '',
  'worker', '', 'lane', lane, 'prio', ARGV[11], 'agent', ARGV[12], 'cancel', 0)
-- A new weight starts the tenant's next turn afresh here (a credit kept under the old one is
-- dropped: a take of a weight-1 tenant never reads or deletes one, so it would otherwise outlive
-- the turn it belonged to). Credits in the tenant's other lanes and priorities are read as at
-- most the new weight.
local weights = prefix .. 'weights'
if redis.call('HGET', weights, ARGV[3]) ~= ARGV[13] then
  redis.call('HSET', weights, ARGV[3], ARGV[13])
  redis.call('HDEL', turns_key(lane_key(prefix, lane), ARGV[11]) .. ':credit', ARGV[3])
end
if tonumber(ARGV[15]) > 0 then
  -- Held to a run limit's turn: queued in its lane once that comes (promote_due).
  redis.call('HSET', KEYS[2], 'state', 'delayed')
  redis.call('ZADD', prefix .. 'delayed', redis_now_ms() + tonumber(ARGV[15]), ARGV[1])
else
  enqueue(prefix, ARGV[1], lane, ARGV[11], ARGV[3], ARGV[12])
end
return {1, ARGV[1]}
