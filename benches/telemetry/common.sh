# Shared by the tracing benchmarks (sourced after benches/common.sh): the OTLP sink on loopback
# they export to, the config every daemon gets, and the environment of each tracing mode.

sink_port=$(free_port)
python3 benches/telemetry/sink.py "$sink_port" &
sink_pid=$!
pids+=("$sink_pid")

# trace_config FILE: a daemon's config (any port, text logs, room in the queue, the bench tenant).
trace_config() {
    cat > "$1" <<TOML
listen = "127.0.0.1:0"
log_format = "text"
[queue]
depth_max = 4096
$(bench_tenant)
TOML
}

# trace_env MODE FILE: the OTEL_* assignments of MODE, one a line, into FILE: none for `off`,
# `always_off` (nothing ever sampled), or a percentage such as `1%` (a trace-id ratio).
trace_env() {
    local endpoint="OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$sink_port" ratio
    case $1 in
        off) : > "$2" ;;
        always_off) printf '%s\n' "$endpoint" OTEL_TRACES_SAMPLER=always_off > "$2" ;;
        [0-9]*%)
            ratio=$(python3 -c "print(float('${1%\%}') / 100)") || {
                echo "bench: $1 is not a percentage" >&2
                return 1
            }
            printf '%s\n' "$endpoint" OTEL_TRACES_SAMPLER=traceidratio "OTEL_TRACES_SAMPLER_ARG=$ratio" > "$2" ;;
        *) echo "bench: unknown tracing mode $1 (off, always_off, or a percentage such as 1%)" >&2; return 1 ;;
    esac
}
