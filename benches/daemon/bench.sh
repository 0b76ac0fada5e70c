#!/usr/bin/env bash
# Load benchmark of the daemon: wrk against `guild serve` on loopback calling a trivial tool
# (echo), recording on: every run sealed into a signed bundle and an fsynced audit record.
# Usage: bash benches/daemon/bench.sh [SECONDS] [CONNECTIONS] [THREADS]
# GUILD_BIN=PATH benchmarks that binary instead of building this checkout's (before/after runs);
# GUILD_BENCH_IN_FLIGHT=N sets queue.runs_in_flight_max (default: the daemon's own).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}
connections=${2:-32}
threads=${3:-1}
command -v wrk >/dev/null || { echo "bench: wrk not found (apt-get install wrk)" >&2; exit 1; }
source benches/common.sh
export GUILD_HOME=$work/home
cat > "$work/guild.toml" <<TOML
listen = "127.0.0.1:0"
log_format = "text"
[queue]
depth_max = 4096
${GUILD_BENCH_IN_FLIGHT:+runs_in_flight_max = $GUILD_BENCH_IN_FLIGHT}
$(bench_tenant)
TOML
bench_serve "$work/guild.toml"
curl -fsS -H "Authorization: Bearer bench-token" -d '{"tool":"echo","input":{"message":"warm"}}' "http://$serve_addr/v1/runs" >/dev/null
echo "guild serve on $serve_addr; wrk -t$threads -c$connections -d${seconds}s, echo, recording on"
wrk -t"$threads" -c"$connections" -d"${seconds}s" --latency -s benches/daemon/run.lua "http://$serve_addr" | tail -n 1
records=$(wc -l < "$GUILD_HOME/audit.log")
# CPU the daemon used per run (user + system), which the machine's other load does not inflate.
ticks=$(cpu_ticks "$serve_pid")
hz=$(getconf CLK_TCK)
echo "daemon RSS: $(awk '/VmRSS/ {print $2, $3}' /proc/$serve_pid/status); audit records: $records"
python3 -c "print(f'daemon CPU per run: {$ticks / $hz / $records * 1e6:.0f} us')"
