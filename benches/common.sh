# Shared by the benchmark scripts (sourced, from the repository root): the guild binary, a work
# directory whose processes are stopped on exit, the bench tenant, and `guild serve` started and
# waited for.

# The guild to measure: $GUILD_BIN, or this checkout's release build.
if [ -n "${GUILD_BIN:-}" ]; then
    guild=$GUILD_BIN
else
    cargo build --release --bin guild >/dev/null 2>&1
    guild=$PWD/target/release/guild
fi
# The scripts read these; the daemons they start must not (`guild serve` reads GUILD_* as config
# and warns about names it does not know).
for name in $(compgen -e | grep -E '^GUILD_(BIN|BENCH)' || true); do export -n "$name"; done
# The echo tool every benchmark calls.
cargo build --profile wasm --target wasm32-wasip2 -p guild-tool-echo --target-dir target/guild-wasm >/dev/null 2>&1
echo_wasm=$PWD/target/guild-wasm/wasm32-wasip2/wasm/echo.wasm

# Scratch space (under $GUILD_BENCH_TMP when set); every pid in `pids` is stopped on exit.
work=$(mktemp -d ${GUILD_BENCH_TMP:+-p "$GUILD_BENCH_TMP"})
pids=()
bench_cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap bench_cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# CPU a process has used so far (user + system), in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# The `bench` tenant (token `bench-token`) with its limits out of the way, as TOML.
bench_tenant() {
    cat <<TOML
[[tenants]]
name = "bench"
$(printf bench-token | "$guild" token hash)
tools = ["*"]
rate_per_second = 1000000.0
burst = 1000000
concurrency_max = 1000000
TOML
}

# bench_serve CONFIG: `guild serve` with the echo tool, in the background (GUILD_HOME as set by
# the caller); sets serve_pid and serve_addr once it listens.
bench_serve() {
    GUILD_LOG=warn,guild::serve_cmd=info "$guild" serve --config "$1" --tool "$echo_wasm" 2> "$work/serve.log" &
    serve_pid=$!
    pids+=($serve_pid)
    for _ in $(seq 100); do grep -q "listening on" "$work/serve.log" 2>/dev/null && break; sleep 0.1; done
    serve_addr=$(sed -n 's/.*listening on http:\/\/\([0-9.:]*\).*/\1/p' "$work/serve.log" | head -1)
    [ -n "$serve_addr" ] || { cat "$work/serve.log"; exit 1; }
}
