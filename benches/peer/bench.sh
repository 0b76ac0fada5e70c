#!/usr/bin/env bash
# Guild side by side with plain wasmtime on this machine, interleaved:
#   1. daemon: wrk against `guild serve` running the `echo` tool (recorded: every run sealed into a
#      signed bundle and an fsynced audit record) and against `wasmtime serve` running a trivial
#      `wasi:http` component that echoes its request body (benches/peer/http-echo), plus Guild's
#      own `/healthz` (its HTTP stack with no run behind it); req/s, p50/p99 and the server's CPU
#      per request (user + system, read from /proc, so other load does not inflate it);
#   2. one process per call: `guild run echo.wasm` against `wasmtime run --invoke` of the same
#      component (its Guild imports trap if called; echo calls none).
# Without a wasmtime binary it still prints Guild's figures and their ratio to `/healthz`.
#
# Usage: bash benches/peer/bench.sh [SECONDS] [CONNECTIONS] [ROUNDS] [PROCESS_CALLS]
#   WASMTIME=PATH           the wasmtime to compare with (default target/peer/bin/wasmtime)
#   GUILD_BENCH_INSTALL_PEER=1  install wasmtime-cli 48.0.8 (Guild's wasmtime) into target/peer
#                           first when it is missing (~40 min of compiling on 2 cores; kept)
#   WASMTIME_SERVE_FLAGS=.. more flags for `wasmtime serve` (default none, as a new user runs it;
#                           e.g. "-O pooling-allocator=y" for its pooling allocator, as Guild uses)
#   GUILD_BIN=PATH          benchmark that guild binary instead of building this checkout's
#   GUILD_BENCH_TMP=DIR     where the daemon's home goes (default: mktemp's, usually on disk)
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}
connections=${2:-32}
rounds=${3:-3}
calls=${4:-20}
command -v wrk >/dev/null || { echo "bench: wrk not found (apt-get install wrk)" >&2; exit 1; }
wasmtime=${WASMTIME:-$PWD/target/peer/bin/wasmtime}
if [ ! -x "$wasmtime" ] && [ "${GUILD_BENCH_INSTALL_PEER:-0}" = 1 ]; then
    echo "installing wasmtime-cli 48.0.8 into target/peer (once)" >&2
    cargo install wasmtime-cli@48.0.8 --locked --root target/peer --target-dir target/peer-build
fi
[ -x "$wasmtime" ] || wasmtime=""

source benches/common.sh
cargo build --release --target wasm32-wasip2 --manifest-path benches/peer/http-echo/Cargo.toml \
    --target-dir target/guild-wasm/peer >/dev/null 2>&1
http_wasm=$PWD/target/guild-wasm/peer/wasm32-wasip2/release/http-echo.wasm

body='{"message":"hello"}'

export GUILD_HOME=$work/home
cat > "$work/guild.toml" <<TOML
listen = "127.0.0.1:0"
log_format = "text"
$(bench_tenant)
TOML
bench_serve "$work/guild.toml"
guild_pid=$serve_pid
guild_addr=$serve_addr

if [ -n "$wasmtime" ]; then
    peer_addr=127.0.0.1:$(free_port)
    # -S cli: the component was built with std, which imports wasi:cli (environment, stdio).
    # shellcheck disable=SC2086 # the flags are words
    "$wasmtime" serve -S cli=y ${WASMTIME_SERVE_FLAGS:-} --addr "$peer_addr" "$http_wasm" > "$work/peer.log" 2>&1 &
    peer_pid=$!
    pids+=($peer_pid)
    for _ in $(seq 100); do curl -fsS -d "$body" "http://$peer_addr/" >/dev/null 2>&1 && break; sleep 0.1; done
    curl -fsS -d "$body" "http://$peer_addr/" >/dev/null || { cat "$work/peer.log"; exit 1; }
fi
curl -fsS -H "Authorization: Bearer bench-token" -d "{\"tool\":\"echo\",\"input\":$body}" "http://$guild_addr/v1/runs" >/dev/null

# measure NAME PID URL METHOD PATH BODY TOKEN: one wrk run; appends a line to $work/results.
measure() {
    local name=$1 pid=$2 url=$3 before after line
    before=$(cpu_ticks "$pid")
    line=$(BENCH_METHOD=$4 BENCH_PATH=$5 BENCH_BODY=$6 BENCH_TOKEN=$7 \
        wrk -t1 -c"$connections" -d"${seconds}s" --latency -s benches/peer/request.lua "$url" | tail -n 1)
    after=$(cpu_ticks "$pid")
    echo "$name $line cpu_ticks $((after - before))" >> "$work/results"
    echo "  $name: $line"
}

echo "== daemon: wrk -t1 -c$connections -d${seconds}s, $rounds interleaved rounds ($(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg))"
for round in $(seq "$rounds"); do
    echo "round $round"
    measure guild "$guild_pid" "http://$guild_addr" POST /v1/runs "{\"tool\":\"echo\",\"input\":$body}" bench-token
    [ -n "$wasmtime" ] && measure wasmtime "$peer_pid" "http://$peer_addr" POST / "$body" ""
    measure healthz "$guild_pid" "http://$guild_addr" GET /healthz "" ""
done
records=$(wc -l < "$GUILD_HOME/audit.log")
echo "audit records written: $records (every answered run has one, fsynced before its answer)"

# One process per call, interleaved in pairs; the compiled component is cached first.
process_times() {
    python3 - "$calls" "$work/times" "$@" <<'PY'
import subprocess, sys, time
calls, out, commands = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
argvs = [c.split("\x1f") for c in commands]
for argv in argvs:
    subprocess.run(argv, check=True, capture_output=True)
times = [[] for _ in argvs]
for _ in range(calls):
    for i, argv in enumerate(argvs):
        t = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times[i].append((time.perf_counter() - t) * 1e3)
with open(out, "w") as f:
    for ts in times:
        ts.sort()
        f.write(f"{ts[len(ts) // 2]:.2f} {ts[len(ts) // 10]:.2f} {ts[-1 - len(ts) // 10]:.2f}\n")
PY
}
sep=$'\x1f'
guild_cmd="$guild${sep}run${sep}$echo_wasm${sep}--input${sep}$body"
echo "== one process per call, $calls interleaved calls each (median, p10, p90 ms)"
if [ -n "$wasmtime" ]; then
    peer_cmd="$wasmtime${sep}run${sep}-W${sep}unknown-imports-trap=y${sep}--invoke${sep}run(\"${body//\"/\\\"}\")${sep}$echo_wasm"
    GUILD_HOME=$work/cli process_times "$guild_cmd" "$peer_cmd"
else
    GUILD_HOME=$work/cli process_times "$guild_cmd"
fi

python3 - "$work/results" "$work/times" "$(getconf CLK_TCK)" <<'PY'
import statistics, sys
results, times, hz = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = {}
for line in open(results):
    f = line.split()
    name, kv = f[0], dict(zip(f[1::2], f[2::2]))
    requests, seconds = int(kv["requests"]), float(kv["seconds"])
    rows.setdefault(name, []).append({
        "rps": requests / seconds, "p50": float(kv["p50_ms"]), "p99": float(kv["p99_ms"]),
        "cpu_us": int(kv["cpu_ticks"]) / hz / max(requests, 1) * 1e6, "errors": int(kv["errors"]),
    })
med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in rows.items()}
print("\n| server (median of rounds) | req/s | p50 ms | p99 ms | server CPU per request | errors |")
print("|---|---|---|---|---|---|")
import os
labels = {"guild": "guild serve, echo tool, recorded + audited",
          "wasmtime": ("wasmtime serve " + os.environ.get("WASMTIME_SERVE_FLAGS", "")).strip() + ", http-echo",
          "healthz": "guild serve, GET /healthz (no run)"}
for n in ("guild", "wasmtime", "healthz"):
    if n in med:
        m = med[n]
        print(f"| {labels[n]} | {m['rps']:,.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['cpu_us']:.0f} µs | {m['errors']:.0f} |")
for peer in ("wasmtime", "healthz"):
    if peer in med:
        g, p = med["guild"], med[peer]
        print(f"guild / {peer}: throughput {g['rps'] / p['rps']:.2f}x, CPU per request {g['cpu_us'] / p['cpu_us']:.2f}x")
lines = open(times).read().split("\n")
g = [float(x) for x in lines[0].split()]
print(f"\nguild run: {g[0]:.1f} ms median (p10 {g[1]:.1f}, p90 {g[2]:.1f})")
if lines[1].strip():
    w = [float(x) for x in lines[1].split()]
    print(f"wasmtime run --invoke: {w[0]:.1f} ms median (p10 {w[1]:.1f}, p90 {w[2]:.1f}); guild / wasmtime: {g[0] / w[0]:.2f}x")
PY
