-- A worker settles a finished attempt (`complete_job` in jobs.lua).
-- KEYS: stream, job hash, result, done stream, stats
-- ARGV: entry, worker, result json, ttl seconds, done stream length kept, notice channel, id,
--       the result json without the output
-- Returns 'recorded' when this attempt's result became the job's, 'duplicate' otherwise.
return complete_job(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]),
  ARGV[5], ARGV[6], ARGV[7], ARGV[8])
