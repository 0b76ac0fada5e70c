#!/usr/bin/env bash
# The main job: set up, build `guild` and the example tools, run each tool on this repository's
# own files under limits through mounts (a limit and a denial included), replay, egress, tools in
# Python and JavaScript, a Redis queue with one `guild worker` on loopback; then start the daemon,
# `guild serve`, with its embedded default: the example tools on 127.0.0.1:8480.
# GUILD_DEMO_SERVE=0 stops after the tour instead of serving.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
echo "== building guild (release) and the example tools (wasm32-wasip2)"
cargo build --release --bin guild
cargo build --profile wasm --target wasm32-wasip2 \
    -p guild-tool-echo -p guild-tool-wc -p guild-tool-grep -p guild-tool-hash -p guild-tool-json-query \
    -p guild-tool-http-get

guild=target/release/guild
tools=target/wasm32-wasip2/wasm
export GUILD_HOME="${GUILD_HOME:-$PWD/target/guild-home}"

step() { echo; echo "== $*"; }

step "guild describe wc"
"$guild" describe "$tools/wc.wasm"

step "wc: lines, words and bytes of the WIT contract (wit/ mounted read-only at /data)"
"$guild" run "$tools/wc.wasm" --dir wit::/data:ro --input '{}'

step "grep: where the SDK's export macro is defined (sdk/ mounted at /data)"
"$guild" run "$tools/grep.wasm" --dir sdk::/data:ro --input '{"pattern":"macro_rules!"}'

step "hash: blake3 of the WIT contract"
"$guild" run "$tools/hash.wasm" --dir wit::/data:ro --input '{"path":"/data"}'

step "json-query: the package name of the first member in a document"
"$guild" run "$tools/json_query.wasm" \
    --input '{"document":{"members":[{"name":"guild-runtime"},{"name":"guild-sdk"}]},"query":"members[0].name"}'

step "replay: the last wc run, verified and re-run from its bundle"
bundle=$("$guild" run "$tools/wc.wasm" --dir wit::/data:ro --input '{}' --summary-json 2>&1 >/dev/null | tail -n 1 \
    | sed -n 's/.*"bundle":"\([0-9a-f]*\)".*/\1/p')
"$guild" bundle verify "$bundle"
"$guild" replay "$bundle"

step "egress: http-get through an explicit rule to a server on loopback"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 --directory wit >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null' EXIT
for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
"$guild" run "$tools/http_get.wasm" --allow-host "http://127.0.0.1:$port" \
    --input "{\"url\":\"http://127.0.0.1:$port/guild.wit\"}" | head -c 300
echo

step "egress refused: the same server by name resolves to loopback (exit code 4 expected)"
set +e
"$guild" run "$tools/http_get.wasm" --allow-host "http://localhost:$port" \
    --input "{\"url\":\"http://localhost:$port/guild.wit\"}"
code=$?
set -e
echo "exit code: $code"
[ "$code" -eq 4 ]

step "a limit at work: wc with almost no fuel (exit code 3 expected)"
set +e
"$guild" run "$tools/wc.wasm" --dir wit::/data:ro --input '{}' --fuel 10000
code=$?
set -e
echo "exit code: $code"
[ "$code" -eq 3 ]

step "a denial: mounting a directory the tool did not ask for (exit code 4 expected)"
set +e
"$guild" run "$tools/echo.wasm" --dir wit::/secrets:ro --input '{"message":"hi"}'
code=$?
set -e
echo "exit code: $code"
[ "$code" -eq 4 ]

step "tools in Python and JavaScript: build summarize-csv (componentize-py) and markdown-links (componentize-js)"
lang="$PWD/target/lang-demo"
mkdir -p "$lang"
(cd tools/summarize-csv && PYTHONPATH=../../.toolchains/python PYTHONDONTWRITEBYTECODE=1 \
    python3 ../../.toolchains/python/bin/componentize-py -d ../../wit -w guild-tool componentize app \
    -o "$lang/summarize_csv.wasm")
(cd tools/markdown-links && node build.mjs "$lang/markdown_links.wasm")
find host -name '*.rs' -exec wc -l -c {} + | awk 'BEGIN { print "file,lines,bytes" } $3 != "total" { print $3 "," $1 "," $2 }' \
    > "$lang/sources.csv"

step "summarize-csv: statistics of the host's Rust files (compiled once into the cache, then warm)"
"$guild" run "$lang/summarize_csv.wasm" --dir "$lang::/data:ro" --input '{"path":"/data/sources.csv"}' | head -c 600
echo

step "markdown-links: the relative links of this repository's Markdown files, broken ones flagged"
# A copy of the docs, not the whole checkout: every mount is captured into the run's bundle.
git ls-files '*.md' | tar -cf - -T - | (mkdir -p "$lang/docs" && tar -xf - -C "$lang/docs")
"$guild" run "$lang/markdown_links.wasm" --dir "$lang/docs::/data:ro" --input '{"external":false}' | head -c 600
echo

step "a Python tool leaving its mount is refused by the host (exit code 4 expected)"
set +e
"$guild" run "$lang/summarize_csv.wasm" --dir "$lang::/data:ro" --input '{"path":"/data/../../Cargo.toml"}'
code=$?
set -e
echo "exit code: $code"
[ "$code" -eq 4 ]

step "across machines: guild serve --redis enqueues, a guild worker runs the job, any node answers"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
redis_dir=$(mktemp -d)
redis_port=$(free_port)
api_port=$(free_port)
redis_url="redis://127.0.0.1:$redis_port/"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly yes --dir "$redis_dir" >/dev/null 2>&1 &
redis=$!
api=""
worker=""
trap 'kill $server $redis $api $worker 2>/dev/null' EXIT
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
GUILD_TOKEN=demo-redis GUILD_HOME="$GUILD_HOME/redis-api" GUILD_LOG=warn \
    "$guild" serve --listen "127.0.0.1:$api_port" --redis "$redis_url" 2>"$redis_dir/api.log" &
api=$!
GUILD_HOME="$GUILD_HOME/redis-worker" GUILD_LOG=warn \
    "$guild" worker --redis "$redis_url" --concurrency 2 --name demo-worker 2>"$redis_dir/worker.log" &
worker=$!
for _ in $(seq 100); do curl -fs "localhost:$api_port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -s -H 'authorization: Bearer demo-redis' -d '{"tool":"echo","input":{"message":"run by a guild worker"}}' \
    "localhost:$api_port/v1/runs"
echo
sleep 1.2 # the worker's next heartbeat carries its count
curl -s "localhost:$api_port/metrics" | grep -E '^guild_redis_(queue_events\{event="completed"|worker_completed)'
env -u GUILD_DEMO_SERVE "$guild" jobs dead --redis "$redis_url"
kill "$api" "$worker" 2>/dev/null; wait "$api" "$worker" 2>/dev/null || true
kill "$redis" 2>/dev/null; wait "$redis" 2>/dev/null || true
rm -rf "$redis_dir"

echo
echo "done: guild is at $guild, the tools under $tools (Python and JavaScript ones under $lang)"
[ "${GUILD_DEMO_SERVE:-1}" = 0 ] && exit 0

step "guild serve: the example tools over HTTP (Ctrl-C drains and stops)"
export GUILD_TOKEN="${GUILD_TOKEN:-demo-token}"
cat <<EOF
In another terminal:
  curl -s -H 'authorization: Bearer $GUILD_TOKEN' localhost:8480/v1/tools
  curl -s -H 'authorization: Bearer $GUILD_TOKEN' -d '{"tool":"wc","input":{"path":"/data"}}' localhost:8480/v1/runs
  curl -s localhost:8480/metrics | grep guild_runs_total
EOF
exec "$guild" serve --dir wit::/data:ro
