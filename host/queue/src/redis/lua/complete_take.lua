-- A worker settles a finished attempt and, in the same request, takes the jobs for the slot it
-- frees: one round trip where `complete` then `take` were two.
-- KEYS: stream, job hash, result, done stream, stats, delayed set
-- ARGV: as complete.lua's (1-8), then queue prefix, job key prefix, count, then the lanes served
-- Returns {said, jobs, next}: said as complete.lua's, jobs and next as take.lua's. The taking
-- never undoes the completion: when it fails (no consumer group) no job is taken, and the
-- worker's own take finds out why.
local said = complete_job(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]),
  ARGV[5], ARGV[6], ARGV[7], ARGV[8])
local lanes = {}
for i = 12, #ARGV do
  lanes[#lanes + 1] = ARGV[i]
end
local taken = take_jobs(KEYS[1], ARGV[2], ARGV[9], ARGV[10], tonumber(ARGV[11]), lanes)
if taken.err then
  return {said, {}, -1}
end
return {said, taken[1], taken[2]}
