-- One entry of an earlier version's `jobs` stream, delivered to (or claimed by) this worker: a
-- job still waiting for it (queued, naming this entry), or left running by a worker whose lease
-- lapsed, goes to its lane; the entry is settled either way.
-- KEYS: the old stream, job hash. ARGV: entry, id, queue prefix, how it came ('fresh': never
-- delivered, so only a queued job is moved — an entry an old worker took without delivering it
-- may still be running there; 'lapsed': its old worker's lease lapsed).
-- Returns 1 when the job was queued in its lane, else 0.
local f = redis.call('HMGET', KEYS[2], 'state', 'entry')
local moved = 0
local movable = f[1] == 'queued' or (f[1] == 'running' and ARGV[4] == 'lapsed')
if f[2] == ARGV[1] and movable then
  redis.call('HSET', KEYS[2], 'state', 'queued', 'entry', '', 'worker', '')
  requeue_job(ARGV[3], KEYS[2], ARGV[2])
  moved = 1
end
settle(KEYS[1], ARGV[1])
return moved
