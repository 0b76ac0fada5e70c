-- KEYS: stream, job hash, result, done stream, stats
-- ARGV: entry, worker, result json, ttl seconds, done stream length kept, notice channel, id,
--       the result json without the output (for the done stream: the audit trail never reads
--       the output, and its readers take entries in batches)
-- Returns 'recorded' when this attempt's result became the job's, 'duplicate' otherwise.
local mine, fields = holds(KEYS[2], ARGV[1], ARGV[2])
if mine then
  settle(KEYS[1], ARGV[1])
  keep_result(KEYS[3], KEYS[2], ARGV[3], 'done', tonumber(ARGV[4]), fields[4] or '')
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'kind', 'completed', 'result', ARGV[8])
  redis.call('HINCRBY', KEYS[5], 'completed', 1)
  redis.call('PUBLISH', ARGV[6], ARGV[7])
  return 'recorded'
end
-- Another worker holds this very entry (it took over the lapsed lease): leave its lease alone.
if not (fields[1] == 'running' and fields[3] == ARGV[1]) then
  settle(KEYS[1], ARGV[1])
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'kind', 'duplicate', 'result', ARGV[8])
redis.call('HINCRBY', KEYS[5], 'duplicates', 1)
return 'duplicate'
