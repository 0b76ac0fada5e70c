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
if [ -n "${GUILD_BIN:-}" ]; then
    guild=$GUILD_BIN
else
    cargo build --release --bin guild >/dev/null 2>&1
    guild=$PWD/target/release/guild
fi
work=$(mktemp -d ${GUILD_BENCH_TMP:+-p "$GUILD_BENCH_TMP"})
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
export GUILD_HOME=$work/home
digest_line=$(printf bench-token | "$guild" token hash)
cat > "$work/guild.toml" <<TOML
listen = "127.0.0.1:0"
log_format = "text"
[queue]
depth_max = 4096
${GUILD_BENCH_IN_FLIGHT:+runs_in_flight_max = $GUILD_BENCH_IN_FLIGHT}
[[tenants]]
name = "bench"
$digest_line
tools = ["*"]
rate_per_second = 1000000.0
burst = 1000000
concurrency_max = 100000
TOML
GUILD_LOG=warn,guild::serve_cmd=info "$guild" serve --config "$work/guild.toml" \
    --tool target/guild-wasm/wasm32-wasip2/wasm/echo.wasm 2> "$work/serve.log" &
server=$!
for _ in $(seq 100); do grep -q "listening on" "$work/serve.log" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/.*listening on http:\/\/\([0-9.:]*\).*/\1/p' "$work/serve.log" | head -1)
[ -n "$addr" ] || { cat "$work/serve.log"; exit 1; }
curl -fsS -H "Authorization: Bearer bench-token" -d '{"tool":"echo","input":{"message":"warm"}}' "http://$addr/v1/runs" >/dev/null
echo "guild serve on $addr; wrk -t$threads -c$connections -d${seconds}s, echo, recording on"
wrk -t"$threads" -c"$connections" -d"${seconds}s" --latency -s benches/daemon/run.lua "http://$addr" | tail -n 1
records=$(wc -l < "$GUILD_HOME/audit.log")
# CPU the daemon used per run (user + system), which the machine's other load does not inflate.
ticks=$(awk '{print $14 + $15}' /proc/$server/stat)
hz=$(getconf CLK_TCK)
echo "daemon RSS: $(awk '/VmRSS/ {print $2, $3}' /proc/$server/status); audit records: $records"
python3 -c "print(f'daemon CPU per run: {$ticks / $hz / $records * 1e6:.0f} us')"
