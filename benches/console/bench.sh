#!/usr/bin/env bash
# The console with many runs kept: fill a `guild serve` (echo, recording on, home on disk) with
# RUNS runs through wrk, then time the runs list and a run's page in headless Chromium (first
# contentful paint and the server's response, medians of ROUNDS loads each).
# Usage: bash benches/console/bench.sh [RUNS] [ROUNDS]   (GUILD_BIN=PATH measures that binary)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-10000}
rounds=${2:-5}
command -v wrk >/dev/null || { echo "bench: wrk not found (apt-get install wrk)" >&2; exit 1; }
[ -d tests/console/node_modules/playwright-core ] || { echo "bench: run scripts/setup.sh first (playwright-core)" >&2; exit 1; }
source benches/common.sh
export GUILD_HOME=$work/home
cat > "$work/guild.toml" <<TOML
listen = "127.0.0.1:0"
log_format = "text"
[queue]
depth_max = 4096
runs_kept_max = $((runs + 1000))
$(bench_tenant)
TOML
bench_serve "$work/guild.toml"
# Fill: wrk until the audit log holds RUNS records.
while [ "$(wc -l < "$GUILD_HOME/audit.log" 2>/dev/null || echo 0)" -lt "$runs" ]; do
    wrk -t1 -c32 -d2s -s benches/daemon/run.lua "http://$serve_addr" >/dev/null
done
kept=$(wc -l < "$GUILD_HOME/audit.log")
run_id=$(curl -fsS -H "Authorization: Bearer bench-token" -d '{"tool":"echo","input":{"message":"the one looked at"}}' \
    "http://$serve_addr/v1/runs" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "guild serve with $((kept + 1)) runs kept; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
node benches/console/paint.mjs "http://$serve_addr" bench-token "$run_id" "$rounds"
