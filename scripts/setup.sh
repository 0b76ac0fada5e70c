#!/usr/bin/env bash
# Installs what Guild needs on a fresh Debian machine with rustup: the wasm32-wasip2 target for
# the tools, the Debian packages the tests use (promtool from `prometheus`, to check the daemon's
# /metrics), and the MCP clients the MCP tests drive (the MCP Python SDK from PyPI, the MCP
# Inspector from npm). Safe to run again; it only installs what is missing.
set -euo pipefail

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found; install Rust 1.95 with rustup first" >&2
    exit 1
fi
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

# Debian packages: command that must exist -> package that provides it.
declare -A packages=(
    [promtool]=prometheus
)
missing=()
for command in "${!packages[@]}"; do
    command -v "$command" >/dev/null || missing+=("${packages[$command]}")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    # --no-install-recommends: promtool needs none of prometheus's web assets or exporters.
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The MCP tests drive `guild mcp` and `/mcp` with the official MCP Python SDK client (PyPI `mcp`),
# pinned so that a new SDK release cannot change what the tests mean.
MCP_PYTHON_SDK_VERSION=2.3.0
if ! python3 -c "import importlib.metadata as m, sys; sys.exit(m.version('mcp') != '$MCP_PYTHON_SDK_VERSION')" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check "mcp==$MCP_PYTHON_SDK_VERSION"
fi

# ... and with the MCP Inspector's CLI mode (npm `@modelcontextprotocol/inspector`, pinned in
# tests/mcp/package.json), installed beside the test script.
if ! [ -x tests/mcp/node_modules/.bin/mcp-inspector ]; then
    if ! command -v npm >/dev/null; then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        $sudo apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
    fi
    npm install --prefix tests/mcp --no-package-lock --no-audit --no-fund --loglevel=error
fi
