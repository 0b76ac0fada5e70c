#!/usr/bin/env bash
# What tracing costs the daemon: wrk against `guild serve` calling echo (recording on), with
# tracing off, on with nothing ever sampled (`always_off`), on at 1% sampling and on at 100%,
# into an OTLP/HTTP sink on loopback that answers every export (it decodes nothing: the cost
# measured is Guild's). A fresh daemon per run; each round runs every mode once, the order
# rotated from round to round, so the machine's drift lands on every mode alike. On a 2-core VM
# two identical runs differ by up to ±10-20%: the summary compares each mode with the `off` run of
# the same round and gives the median and mean of those ratios over the rounds; use 15 rounds or
# more for a figure of a few percent.
# Usage: bash benches/telemetry/bench.sh [SECONDS] [CONNECTIONS] [ROUNDS]
# GUILD_BIN=PATH measures that binary; GUILD_BIN_BEFORE=PATH adds a mode `before` (a build from
# before tracing existed, for "off costs nothing"); GUILD_BENCH_TRACE_MODES="off 1%" picks modes
# (the first is the one the others are compared with).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}
connections=${2:-32}
rounds=${3:-3}
command -v wrk >/dev/null || { echo "bench: wrk not found (apt-get install wrk)" >&2; exit 1; }
source benches/common.sh
source benches/telemetry/common.sh
read -r -a modes <<< "${GUILD_BENCH_TRACE_MODES:-off always_off 1% 100%}"
[ -n "${GUILD_BIN_BEFORE:-}" ] && modes+=(before)
run_mode() {
    local mode=$1 bin=$guild
    # $2: the round
    export GUILD_HOME=$work/home-$RANDOM
    trace_config "$work/guild.toml"
    unset OTEL_EXPORTER_OTLP_ENDPOINT OTEL_TRACES_SAMPLER OTEL_TRACES_SAMPLER_ARG
    if [ "$mode" = before ]; then
        bin=$GUILD_BIN_BEFORE
    else
        trace_env "$mode" "$work/env"
        while read -r assignment; do export "${assignment?}"; done < "$work/env"
    fi
    local saved=$guild
    guild=$bin
    bench_serve "$work/guild.toml"
    guild=$saved
    curl -fsS -H "Authorization: Bearer bench-token" -d '{"tool":"echo","input":{"message":"warm"}}' "http://$serve_addr/v1/runs" >/dev/null
    local before_ticks line ticks records
    before_ticks=$(cpu_ticks "$serve_pid")
    line=$(wrk -t1 -c"$connections" -d"${seconds}s" --latency -s benches/daemon/run.lua "http://$serve_addr" | tail -n 1)
    ticks=$(( $(cpu_ticks "$serve_pid") - before_ticks ))
    records=$(wc -l < "$GUILD_HOME/audit.log")
    kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true
    # The sampler the daemon says it runs with, so that a mode that is not what it claims shows.
    local sampler
    sampler=$(sed -n 's/.*sampler=\([^ ]*\).*/\1/p' "$work/serve.log" | head -1)
    local cpu_us
    cpu_us=$(python3 -c "print(round($ticks / $(getconf CLK_TCK) / max($records, 1) * 1e6))")
    printf '%10s  %s  CPU/run %s us  sampler %s\n' "$mode" "$line" "$cpu_us" "${sampler:-none}"
    # round mode runs/s p99(ms) CPU/run(us) errors, for the summary (a run wrk could not
    # report is left out of it, and shows above)
    if [[ $line == runs/s* ]]; then
        echo "$2 $mode $(awk '{print $2, $7}' <<< "$line") $cpu_us $(awk '{print $10}' <<< "$line")" >> "$work/results"
    fi
}
echo "guild serve, echo, recording on; wrk -t1 -c$connections -d${seconds}s; $rounds rounds, modes rotated;" \
    "$(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$rounds"); do
    for k in $(seq 0 $((${#modes[@]} - 1))); do
        run_mode "${modes[$(( (round + k) % ${#modes[@]} ))]}" "$round"
    done
done
python3 - "$work/results" "${modes[@]}" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
base, modes = sys.argv[2], sys.argv[2:]
by = {(r[0], r[1]): (float(r[2]), float(r[3]), float(r[4])) for r in rows}
errors = {}
for r in rows:
    errors[r[1]] = errors.get(r[1], 0) + int(r[5])
rounds = sorted({r[0] for r in rows}, key=int)
print(f"summary over {len(rounds)} rounds; ratios against {base} in the same round (median, mean ± standard error)")
for mode in modes:
    if not any(key[1] == mode for key in by):
        print(f"{mode:>10}  no run of this mode was measured")
        continue
    if errors.get(mode):
        print(f"{mode:>10}  {errors[mode]} requests failed: its figures are not comparable")
    got = [by[(r, mode)] for r in rounds if (r, mode) in by and (r, base) in by]
    ratio = [by[(r, mode)][0] / by[(r, base)][0] for r in rounds if (r, mode) in by and (r, base) in by]
    cpu = [by[(r, mode)][2] / by[(r, base)][2] for r in rounds if (r, mode) in by and (r, base) in by]
    se = lambda xs: statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else 0.0
    print(f"{mode:>10}  runs/s median {statistics.median(g[0] for g in got):,.0f}"
          f"  p99 median {statistics.median(g[1] for g in got):.1f} ms"
          f"  CPU/run median {statistics.median(g[2] for g in got):.0f} us"
          f"  runs/s vs {base} {statistics.median(ratio):.3f}, {statistics.mean(ratio):.3f} ± {se(ratio):.3f}"
          f"  CPU/run vs {base} {statistics.median(cpu):.3f}, {statistics.mean(cpu):.3f} ± {se(cpu):.3f}")
PY
