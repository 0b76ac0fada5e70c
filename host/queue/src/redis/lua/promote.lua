-- Queue again the retries whose backoff is over and the runs whose turn has come.
-- KEYS: delayed set. ARGV: most to move, job key prefix, queue prefix.
local promoted = promote_due(ARGV[3], ARGV[2], tonumber(ARGV[1]))
return promoted
