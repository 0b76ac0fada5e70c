-- A worker takes up to `count` jobs from the lanes it serves (`take_jobs` in jobs.lua).
-- KEYS: stream, stats, delayed set
-- ARGV: worker, queue prefix, job key prefix, count, then the lanes served
-- Returns {jobs, next} as `take_jobs` does.
local lanes = {}
for i = 5, #ARGV do
  lanes[#lanes + 1] = ARGV[i]
end
return take_jobs(KEYS[1], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), lanes)
