-- Ask for a job to be cancelled: the request itself (read by the worker running it at each lease
-- renewal) and, while the job lives, its hash's `cancel` field set to 1 (read by the take, so a
-- worker that takes the job later ends it at once without asking). During a rolling upgrade, a
-- cancel sent through an API node of an earlier version writes the key alone: a job queued by
-- this version then learns of it at its worker's first lease renewal.
-- KEYS: cancel request, job hash. ARGV: seconds the request is kept.
redis.call('SET', KEYS[1], 1, 'EX', ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'cancel', 1)
end
return 1
