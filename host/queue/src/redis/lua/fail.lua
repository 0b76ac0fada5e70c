-- A retryable failure (host error, lost worker, upstream 5xx).
-- KEYS: stream, job hash, result, done stream, stats, delayed set, dead stream
-- ARGV: entry, worker, id, backoff ms (due then, by Redis's clock), result json (status dead, for the last attempt),
--       ttl seconds, dead ttl seconds, done stream length kept, dead stream length kept,
--       error json, bundle hex or '', now unix ms, notice channel, this attempt's result json
--       (status failed, for the audit log when the job is retried)
-- Returns 'retry', 'dead' or 'duplicate'.
local mine, fields = holds(KEYS[2], ARGV[1], ARGV[2])
if not mine then
  if not (fields[1] == 'running' and fields[3] == ARGV[1]) then
    settle(KEYS[1], ARGV[1])
  end
  return 'duplicate'
end
settle(KEYS[1], ARGV[1])
local meta = redis.call('HMGET', KEYS[2], 'attempts', 'attempts_max', 'tenant', 'tool')
if tonumber(meta[1]) >= tonumber(meta[2]) then
  local dead_entry = redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[9], '*', 'job', ARGV[3],
    'tenant', meta[3], 'tool', meta[4], 'attempts', meta[1], 'error', ARGV[10], 'bundle', ARGV[11],
    'time', ARGV[12])
  keep_result(KEYS[3], KEYS[2], ARGV[5], 'dead', tonumber(ARGV[7]))
  redis.call('HSET', KEYS[2], 'dead_entry', dead_entry)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'kind', 'dead', 'result', ARGV[5])
  redis.call('PUBLISH', ARGV[13], ARGV[3])
  return 'dead'
end
redis.call('ZADD', KEYS[6], redis_now_ms() + tonumber(ARGV[4]), ARGV[3])
redis.call('HSET', KEYS[2], 'state', 'delayed', 'worker', '')
redis.call('HINCRBY', KEYS[5], 'retries', 1)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'kind', 'retried', 'result', ARGV[14])
return 'retry'
