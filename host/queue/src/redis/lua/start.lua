-- A worker starts the entries it was delivered (by XREADGROUP or XAUTOCLAIM).
-- KEYS: stream, stats
-- ARGV: worker, job key prefix, claimed (1 when these were taken over from a lapsed lease),
--       then entry, job id pairs
-- Returns, per entry it should run: {entry, body, attempt}; a body the hash lacks (a node of
-- another version wrote it) is '', so every reply has its three parts and the worker fails that
-- job alone.
local out = {}
local worker, prefix = ARGV[1], ARGV[2]
for i = 4, #ARGV, 2 do
  local entry, id = ARGV[i], ARGV[i + 1]
  local job_key = prefix .. id
  local fields = redis.call('HMGET', job_key, 'state', 'entry', 'body')
  local state = fields[1]
  if not state or fields[2] ~= entry or state == 'done' or state == 'dead' or state == 'delayed' then
    -- Finished, expired, or an entry the job has since left (it was retried): drop it.
    settle(KEYS[1], entry)
  else
    local attempt = redis.call('HINCRBY', job_key, 'attempts', 1)
    redis.call('HSET', job_key, 'state', 'running', 'worker', worker)
    if ARGV[3] == '1' then
      redis.call('HINCRBY', KEYS[2], 'claims', 1)
    end
    table.insert(out, {entry, fields[3] or '', attempt})
  end
end
return out
