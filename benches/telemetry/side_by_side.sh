#!/usr/bin/env bash
# What tracing costs the daemon, measured side by side: two `guild serve` daemons at once, one
# with tracing off and one in MODE (1%, always_off, 100%, or off for a control), each under its
# own `wrk` for the same seconds, so the machine's drift and its neighbours land on both alike.
# The sides swap from pair to pair. Each pair gives MODE's runs/s, p99 and CPU per run over off's
# (a pair in which wrk failed a request is left out, and says so); the summary is their median
# and mean ± standard error. On this 2-core VM one pair of off against off differs by about ±4%
# (a run of one daemon after the other: ±10-20%), so 16 pairs put a mean within about ±1%. Both
# daemons share the cores: the figures are each daemon's at half the machine, which is what the
# ratio compares.
# Usage: bash benches/telemetry/side_by_side.sh [MODE] [SECONDS] [CONNECTIONS] [PAIRS]
# GUILD_BIN=PATH measures that binary; GUILD_BIN_OFF=PATH runs the `off` side with another one
# (before vs after a change, both in MODE: set MODE's side with GUILD_BIN, the other with
# GUILD_BIN_OFF and GUILD_BENCH_OFF_MODE=MODE).
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-1%}
seconds=${2:-4}
connections=${3:-32}
pairs=${4:-16}
command -v wrk >/dev/null || { echo "bench: wrk not found (apt-get install wrk)" >&2; exit 1; }
source benches/common.sh
source benches/telemetry/common.sh
base_mode=${GUILD_BENCH_OFF_MODE:-off}
base_bin=${GUILD_BIN_OFF:-$guild}

# start SIDE MODE BIN: a daemon in MODE; sets addr_SIDE and pid_SIDE.
start() {
    local side=$1 mode=$2 bin=$3
    mkdir -p "$work/$side"
    trace_config "$work/$side/guild.toml"
    trace_env "$mode" "$work/$side/env"
    local -a env=(GUILD_HOME="$work/$side/home" GUILD_LOG=warn,guild::serve_cmd=info)
    mapfile -t -O 2 env < "$work/$side/env"
    env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_TRACES_SAMPLER -u OTEL_TRACES_SAMPLER_ARG "${env[@]}" \
        "$bin" serve --config "$work/$side/guild.toml" --tool "$echo_wasm" 2> "$work/$side/serve.log" &
    local pid=$!
    pids+=("$pid")
    for _ in $(seq 100); do grep -q "listening on" "$work/$side/serve.log" 2>/dev/null && break; sleep 0.1; done
    local addr
    addr=$(sed -n 's/.*listening on http:\/\/\([0-9.:]*\).*/\1/p' "$work/$side/serve.log" | head -1)
    [ -n "$addr" ] || { cat "$work/$side/serve.log"; exit 1; }
    curl -fsS -H "Authorization: Bearer bench-token" -d '{"tool":"echo","input":{"message":"warm"}}' \
        "http://$addr/v1/runs" >/dev/null
    printf -v "addr_$side" '%s' "$addr"
    printf -v "pid_$side" '%s' "$pid"
}

runs() { wc -l < "$work/$1/home/audit.log"; }

echo "guild serve, echo, recording on: $mode beside $base_mode, both at once; wrk -t1 -c$connections" \
    "-d${seconds}s each; $pairs pairs, sides swapped; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
: > "$work/results"
for pair in $(seq "$pairs"); do
    rm -rf "$work/a" "$work/b"
    if (( pair % 2 )); then start a "$mode" "$guild"; start b "$base_mode" "$base_bin"
    else start a "$base_mode" "$base_bin"; start b "$mode" "$guild"; fi
    # One assignment a line: a failing `$(...)` then stops the script instead of reading as 0.
    ticks_a=$(cpu_ticks "$pid_a")
    ticks_b=$(cpu_ticks "$pid_b")
    runs_a=$(runs a)
    runs_b=$(runs b)
    wrk -t1 -c"$connections" -d"${seconds}s" -s benches/daemon/run.lua "http://$addr_a" > "$work/wrk-a" &
    wrk_a=$!
    wrk -t1 -c"$connections" -d"${seconds}s" -s benches/daemon/run.lua "http://$addr_b" > "$work/wrk-b" &
    wrk_b=$!
    # A wrk that failed shows below as a pair left out.
    wait "$wrk_a" || true
    wait "$wrk_b" || true
    now=$(cpu_ticks "$pid_a")
    ticks_a=$(( now - ticks_a ))
    now=$(cpu_ticks "$pid_b")
    ticks_b=$(( now - ticks_b ))
    now=$(runs a)
    runs_a=$(( now - runs_a ))
    now=$(runs b)
    runs_b=$(( now - runs_b ))
    kill "$pid_a" "$pid_b" 2>/dev/null || true
    wait "$pid_a" "$pid_b" 2>/dev/null || true
    # Stopped: not for the exit's clean-up to signal again (the pid may be another's by then).
    pids=("$sink_pid")
    # wrk's p99 (ms) and failed requests for each side.
    read -r p99_a errors_a <<< "$(tail -n 1 "$work/wrk-a" | awk '{print $7, $10}')"
    read -r p99_b errors_b <<< "$(tail -n 1 "$work/wrk-b" | awk '{print $7, $10}')"
    if [ -z "$p99_a" ] || [ -z "$p99_b" ] || [ "$errors_a" != 0 ] || [ "$errors_b" != 0 ]; then
        echo "pair $pair left out: wrk failed requests or did not report ($(cat "$work/wrk-a" "$work/wrk-b" | tr '\n' ' '))"
        continue
    fi
    # The side in MODE first.
    if (( pair % 2 )); then line="$runs_a $ticks_a $p99_a $runs_b $ticks_b $p99_b"
    else line="$runs_b $ticks_b $p99_b $runs_a $ticks_a $p99_a"; fi
    read -r mode_runs mode_ticks mode_p99 base_runs base_ticks base_p99 <<< "$line"
    python3 -c "
r, t, br, bt = $mode_runs, $mode_ticks, $base_runs, $base_ticks
us = lambda ticks, n: ticks / $(getconf CLK_TCK) / max(n, 1) * 1e6
print(f'pair $pair  $mode {r / $seconds:,.0f} runs/s p99 $mode_p99 ms {us(t, r):.0f} us/run'
      f'   $base_mode {br / $seconds:,.0f} runs/s p99 $base_p99 ms {us(bt, br):.0f} us/run')"
    echo "$line" >> "$work/results"
done
python3 - "$work/results" "$mode" "$base_mode" <<'PY'
import statistics, sys
rows = [[float(x) for x in line.split()] for line in open(sys.argv[1])]
mode, base = sys.argv[2], sys.argv[3]
if not rows:
    sys.exit("no pair was measured")
runs = [r / max(br, 1) for r, _, _, br, _, _ in rows]
cpu = [(t / max(r, 1)) / (bt / max(br, 1)) for r, t, _, br, bt, _ in rows]
p99 = [p / bp for _, _, p, _, _, bp in rows]
se = lambda xs: statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else 0.0
show = lambda xs: f"{statistics.median(xs):.3f}, {statistics.mean(xs):.3f} ± {se(xs):.3f}"
print(f"summary over {len(rows)} pairs, {mode} over {base} in the same pair (median, mean ± standard error):"
      f"  runs/s {show(runs)}  p99 {show(p99)}  CPU/run {show(cpu)}")
PY
