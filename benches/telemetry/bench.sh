#!/usr/bin/env bash
# What tracing costs the daemon: wrk against `guild serve` calling echo (recording on), with
# tracing off, on at 1% sampling and on at 100%, into an OTLP/HTTP sink on loopback that answers
# every export (it decodes nothing: the cost measured is Guild's). Rounds are interleaved so the
# machine's drift lands on every mode alike.
# Usage: bash benches/telemetry/bench.sh [SECONDS] [CONNECTIONS] [ROUNDS]
# GUILD_BIN=PATH measures that binary; GUILD_BIN_BEFORE=PATH adds a mode `before` (a build from
# before tracing existed, for "off costs nothing").
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}
connections=${2:-32}
rounds=${3:-3}
command -v wrk >/dev/null || { echo "bench: wrk not found (apt-get install wrk)" >&2; exit 1; }
source benches/common.sh
sink_port=$(free_port)
python3 benches/telemetry/sink.py "$sink_port" &
pids+=($!)
modes=(off "1%" "100%")
[ -n "${GUILD_BIN_BEFORE:-}" ] && modes=(before "${modes[@]}")
run_mode() {
    local mode=$1 bin=$guild
    export GUILD_HOME=$work/home-$RANDOM
    cat > "$work/guild.toml" <<TOML
listen = "127.0.0.1:0"
log_format = "text"
[queue]
depth_max = 4096
$(bench_tenant)
TOML
    unset OTEL_EXPORTER_OTLP_ENDPOINT OTEL_TRACES_SAMPLER OTEL_TRACES_SAMPLER_ARG
    case $mode in
        before) bin=$GUILD_BIN_BEFORE ;;
        off) ;;
        *) export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$sink_port OTEL_TRACES_SAMPLER=traceidratio \
               OTEL_TRACES_SAMPLER_ARG="$(python3 -c "print(${mode%\%} / 100)")" ;;
    esac
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
    python3 -c "print(f'{\"$mode\":>7}  $line  CPU/run {$ticks / $(getconf CLK_TCK) / max($records, 1) * 1e6:.0f} us  sampler {\"${sampler:-none}\"}')"
}
echo "guild serve, echo, recording on; wrk -t1 -c$connections -d${seconds}s; $rounds interleaved rounds; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$rounds"); do
    for mode in "${modes[@]}"; do run_mode "$mode"; done
done
