#!/usr/bin/env bash
# Throughput of the Redis queue on this machine, end to end, for a trivial tool (echo),
# recording on (every attempt sealed into a signed bundle that goes to Redis, every completion
# audited by the API node):
#   1. redis-benchmark's raw XADD rate against the same redis-server (the ceiling);
#   2. drain: N jobs enqueued through the API while no worker runs, then 1 (or 2) `guild worker`
#      processes started and timed until every job's result is in Redis;
#   3. sync: wrk POSTing runs to `guild serve --redis` that wait for their results, with 1 and
#      2 workers.
# Usage: bash benches/redis/bench.sh [JOBS] [SECONDS] [CONCURRENCY_PER_WORKER]
# GUILD_BIN=PATH benchmarks that binary instead of building this checkout's.
# GUILD_BENCH_CLUSTER=1 runs it all on a Redis Cluster of six nodes (3 masters, 3 replicas).
# GUILD_BENCH_DURABILITY=replica (or aof, on Redis 7.2+) sets redis.ack_durability; for one
# node, replica also starts a replica of it.
# GUILD_BENCH_FSYNC=always measures Redis fsyncing its append-only file before every reply
# (default everysec). GUILD_BENCH_CONFIG=TOML is added to the API node's config (run limits,
# say). GUILD_BENCH_PERF=DIR records each drain with `perf record -a -g` into
# DIR/drain-WORKERS.perf (every process on the machine: Redis, the API node, the workers);
# GUILD_BENCH_PERF_ARGS replaces perf's options (`-a --call-graph dwarf -F 99` for Rust stacks).
# Each of the 8 submitting clients names its own agent label (Guild-Agent), so jobs take turns
# among agents as they would with many agents.
set -euo pipefail
cd "$(dirname "$0")/../.."
jobs=${1:-20000}
seconds=${2:-10}
per_worker=${3:-4}
for tool in redis-server redis-benchmark redis-cli wrk; do
    command -v $tool >/dev/null || { echo "bench: $tool not found (bash scripts/setup.sh; apt-get install wrk)" >&2; exit 1; }
done
source benches/common.sh
fsync=${GUILD_BENCH_FSYNC:-everysec}
start_node() { # PORT DIR [ARGS...]: one redis-server, waited for
    local node_port=$1 dir=$2
    shift 2
    mkdir -p "$dir"
    redis-server --port "$node_port" --bind 127.0.0.1 --save '' --appendonly yes --appendfsync "$fsync" \
        --maxmemory-policy noeviction --dir "$dir" "$@" > "$dir/redis.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 200); do redis-cli -p "$node_port" ping >/dev/null 2>&1 && return; sleep 0.05; done
    echo "bench: redis-server on $node_port did not start: $(tail -3 "$dir/redis.log")" >&2
    exit 1
}
if [ -n "${GUILD_BENCH_CLUSTER:-}" ]; then
    # A Redis Cluster on this machine: three masters with a replica each. The job path's
    # commands all go to the master of the queue's slot: its counters are the ones reported.
    cluster_ports=()
    for i in $(seq 6); do
        # A node's cluster bus listens on its port + 10000: below 55536, with that one free too.
        while :; do
            p=$(free_port)
            [ "$p" -le 55535 ] && python3 -c "import socket,sys; socket.socket().bind(('127.0.0.1', $p + 10000))" 2>/dev/null && break
        done
        cluster_ports+=("$p")
        start_node "${cluster_ports[-1]}" "$work/node$i" --cluster-enabled yes --cluster-config-file nodes.conf
    done
    redis-cli --cluster create $(printf '127.0.0.1:%s ' "${cluster_ports[@]}") --cluster-replicas 1 --cluster-yes >/dev/null
    for p in "${cluster_ports[@]}"; do
        for _ in $(seq 300); do
            redis-cli -p "$p" cluster info | grep -q cluster_state:ok && break
            sleep 0.1
        done
    done
    sleep 2
    slot=$(redis-cli -p "${cluster_ports[0]}" cluster keyslot 'guild:{default}:leases' | tr -d '\r')
    port=$(redis-cli -p "${cluster_ports[0]}" cluster nodes | awk -v slot="$slot" '
        $3 ~ /master/ { for (i = 9; i <= NF; i++) { split($i, r, "-"); if (r[2] == "") r[2] = r[1];
            if (slot + 0 >= r[1] + 0 && slot + 0 <= r[2] + 0) { split($2, a, "[:@]"); print a[2] } } }')
    redis_section="cluster = [$(printf '"redis://127.0.0.1:%s", ' "${cluster_ports[@]:0:3}")]"
    worker_redis=()
    export GUILD_REDIS__CLUSTER="[$(printf '"redis://127.0.0.1:%s", ' "${cluster_ports[@]:0:3}")]"
    shape="a Redis Cluster of 3 masters and 3 replicas (the queue's slot on :$port)"
    # redis-benchmark's cluster mode puts a tag of each master's in place of `{tag}`.
    benchmark_args=(--cluster -p "${cluster_ports[0]}")
    bench_key='bench:{tag}'
else
    port=$(free_port)
    start_node "$port" "$work/redis"
    redis_section="url = \"redis://127.0.0.1:$port/\""
    worker_redis=(--redis "redis://127.0.0.1:$port/")
    shape="one redis-server"
    benchmark_args=(-p "$port")
    bench_key='bench:stream'
    if [ "${GUILD_BENCH_DURABILITY:-local}" = replica ]; then
        # A replica of it, so that WAIT 1 has one to confirm submissions.
        replica_port=$(free_port)
        start_node "$replica_port" "$work/replica" --replicaof 127.0.0.1 "$port"
        for _ in $(seq 100); do
            redis-cli -p "$replica_port" info replication | grep -q master_link_status:up && break
            sleep 0.05
        done
        shape="one redis-server and its replica"
    fi
fi
durability=${GUILD_BENCH_DURABILITY:-local}
redis_section="$redis_section
ack_durability = \"$durability\""
rcli() { redis-cli -p "$port" "$@"; }

echo "== redis-benchmark, XADD, $shape (appendonly yes, appendfsync $fsync; guild: ack_durability $durability)"
for pipeline in 1 16; do
    rate=$(redis-benchmark "${benchmark_args[@]}" -n 200000 -c 50 -P $pipeline -q XADD "$bench_key" '*' job x | grep -o '[0-9.]* requests per second' | tail -1)
    echo "XADD, 50 clients, pipeline $pipeline: $rate"
done
[ -n "${GUILD_BENCH_CLUSTER:-}" ] || rcli del bench:stream >/dev/null

cat > "$work/guild.toml" <<TOML
listen = "127.0.0.1:0"
log_format = "text"
[redis]
$redis_section
$(bench_tenant)
${GUILD_BENCH_CONFIG:-}
TOML
GUILD_HOME=$work/api bench_serve "$work/guild.toml"
api=$serve_pid
addr=$serve_addr

start_workers() {
    worker_pids=()
    for i in $(seq "$1"); do
        GUILD_HOME=$work/w$i GUILD_LOG=warn "$guild" worker "${worker_redis[@]}" --concurrency "$per_worker" \
            --name "bench-$i" 2> "$work/worker-$i.log" &
        worker_pids+=($!)
        pids+=($!)
    done
}
stop_workers() {
    for pid in "${worker_pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
}
completed() { local n; n=$(rcli hget 'guild:{default}:stats' completed | tr -d '\r'); echo "${n:-0}"; }
# Redis's own counters, as "commands net_bytes cpu_seconds aof_bytes": commands clients sent
# (a script counts once), bytes in and out, the server's CPU (user + system), the append-only
# file's size.
redis_counters() {
    rcli info everything | tr -d '\r' | awk -F: '
        /^total_commands_processed:/ { commands = $2 }
        /^total_net_input_bytes:/ { bytes += $2 }
        /^total_net_output_bytes:/ { bytes += $2 }
        /^used_cpu_sys:/ { cpu += $2 }
        /^used_cpu_user:/ { cpu += $2 }
        /^aof_current_size:/ { aof = $2 }
        END { print commands, bytes, cpu, aof }'
}
# Wait until the queue's `completed` count reaches $1: one Python process polling on one Redis
# connection every 20 ms.
wait_for_completed() {
    python3 - "$port" "$1" <<'PY'
import socket, sys, time
port, target = int(sys.argv[1]), int(sys.argv[2])
conn = socket.create_connection(("127.0.0.1", port))
reader = conn.makefile("rb")
key = b"guild:{default}:stats"
command = b"*3\r\n$4\r\nHGET\r\n$%d\r\n%s\r\n$9\r\ncompleted\r\n" % (len(key), key)
while True:
    conn.sendall(command)
    header = reader.readline()
    done = 0
    if header.startswith(b"$") and header[1:].strip() != b"-1":
        done = int(reader.readline())
    if done >= target:
        break
    time.sleep(0.02)
PY
}

for workers in 1 2; do
    echo "== drain: $jobs echo jobs enqueued, then $workers worker(s) × concurrency $per_worker"
    before=$(completed)
    read -r commands0 bytes0 cpu0 aof0 <<< "$(redis_counters)"
    python3 - "$addr" "$jobs" <<'PY'
import http.client, json, sys, threading
addr, jobs = sys.argv[1], int(sys.argv[2])
host, port = addr.rsplit(":", 1)
def submit(start, count):
    conn = http.client.HTTPConnection(host, int(port))
    headers = {"Authorization": "Bearer bench-token", "Guild-Agent": f"agent-{start}"}
    for i in range(start, start + count):
        body = json.dumps({"tool": "echo", "input": {"message": f"job {i}"}, "async": True})
        conn.request("POST", "/v1/runs", body, headers)
        reply = conn.getresponse(); reply.read()
        assert reply.status == 202, reply.status
threads = [threading.Thread(target=submit, args=(t * (jobs // 8), jobs // 8)) for t in range(8)]
[t.start() for t in threads]; [t.join() for t in threads]
PY
    target=$((before + jobs / 8 * 8))
    read -r commands1 bytes1 cpu1 aof1 <<< "$(redis_counters)"
    python3 -c "
n = $target - $before
print(f'Redis per job (submitting): {($commands1 - $commands0) / n:.1f} commands, {($bytes1 - $bytes0) / n:.0f} bytes on the wire, {max($aof1 - $aof0, 0) / n:.0f} bytes of append-only file, {($cpu1 - $cpu0) / n * 1e6:.0f} us of Redis CPU')"
    api_ticks=$(cpu_ticks "$api")
    read -r commands0 bytes0 cpu0 aof0 <<< "$(redis_counters)"
    rcli info commandstats | tr -d '\r' > "$work/commandstats0"
    if [ -n "${GUILD_BENCH_PERF:-}" ]; then
        mkdir -p "$GUILD_BENCH_PERF"
        perf record ${GUILD_BENCH_PERF_ARGS:--a -g -F 499} -o "$GUILD_BENCH_PERF/drain-$workers.perf" 2> "$work/perf.log" &
        perf_pid=$!
        sleep 0.5
    fi
    started=$(date +%s.%N)
    start_workers "$workers"
    # One poller on one connection (no process forked per poll, which cost ~19% of the CPU).
    wait_for_completed "$target"
    finished=$(date +%s.%N)
    if [ -n "${GUILD_BENCH_PERF:-}" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
    read -r commands1 bytes1 cpu1 aof1 <<< "$(redis_counters)"
    rcli info commandstats | tr -d '\r' > "$work/commandstats1"
    worker_ticks=0
    for pid in "${worker_pids[@]}"; do worker_ticks=$((worker_ticks + $(cpu_ticks "$pid"))); done
    api_ticks=$(($(cpu_ticks "$api") - api_ticks))
    python3 -c "
n = $target - $before; hz = $(getconf CLK_TCK)
print(f'jobs/s: {n / ($finished - $started):.0f} ({n} jobs in {$finished - $started:.2f} s, worker start-up included)')
print(f'CPU per job: workers {$worker_ticks / hz / n * 1e6:.0f} us, API node {$api_ticks / hz / n * 1e6:.0f} us, Redis {($cpu1 - $cpu0) / n * 1e6:.0f} us')
print(f'Redis per job (draining: take, run, share the bundle, complete, audit): {($commands1 - $commands0) / n:.1f} commands, {($bytes1 - $bytes0) / n:.0f} bytes on the wire, {max($aof1 - $aof0, 0) / n:.0f} bytes of append-only file')"
    # What clients sent (a script is one call; the commands it runs are counted apart), per job:
    # each call is a request Redis reads and answers.
    python3 - "$work/commandstats0" "$work/commandstats1" "$((target - before))" <<'PY'
import re, sys
def calls(path):
    out = {}
    for line in open(path):
        m = re.match(r"cmdstat_([^:]+):calls=(\d+),usec=(\d+)", line)
        if m:
            out[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return out
before, after, n = calls(sys.argv[1]), calls(sys.argv[2]), int(sys.argv[3])
rows = [(name, c - before.get(name, (0, 0))[0], u - before.get(name, (0, 0))[1]) for name, (c, u) in after.items()]
rows = sorted((r for r in rows if r[1] > 0), key=lambda r: -r[2])
print("Redis per job by command (calls, µs inside Redis; script bodies counted under their commands too):")
print("  " + ", ".join(f"{name} {c / n:.2f} ({u / n:.0f} µs)" for name, c, u in rows))
PY
    echo "== sync: wrk -c32 -d${seconds}s POST /v1/runs (waits for the result), $workers worker(s)"
    wrk -t1 -c32 -d"${seconds}s" --latency -s benches/daemon/run.lua "http://$addr" | tail -n 1
    stop_workers
done
echo "audit records: $(wc -l < "$work/api/audit.log")"
