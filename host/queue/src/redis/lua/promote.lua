-- Queue again the retries whose backoff is over and the runs whose turn has come.
-- ARGV: now unix ms, most to move, job key prefix, queue prefix.
return promote_due(ARGV[4], ARGV[3], tonumber(ARGV[1]), tonumber(ARGV[2]))
