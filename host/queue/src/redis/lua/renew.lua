-- KEYS: stream, job hash. ARGV: entry, worker.
-- Resets the entry's idle time while the worker still holds it; 0 when the lease was lost.
if holds(KEYS[2], ARGV[1], ARGV[2]) then
  redis.call('XCLAIM', KEYS[1], GROUP, ARGV[2], 0, ARGV[1], 'JUSTID')
  return 1
end
return 0
