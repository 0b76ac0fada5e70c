#!/usr/bin/env bash
# Installs what Guild needs on a fresh Debian machine with rustup: the wasm32-wasip2 target for
# the tools, and Mesa's Vulkan drivers for the GPU kernels. Safe to run again; it only installs
# what is missing.
set -euo pipefail

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found; install Rust 1.95 with rustup first" >&2
    exit 1
fi
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

# GPU kernels run through wgpu on Vulkan. Without a GPU, Mesa's lavapipe is a Vulkan device on
# the CPU: the tests and CI use it. Installed only when a package is missing, so a set-up machine
# pays one dpkg query.
if ! dpkg-query -W -f='${Status}\n' mesa-vulkan-drivers libvulkan1 2>/dev/null | grep -c "ok installed" | grep -qx 2; then
    if command -v apt-get >/dev/null; then
        sudo=""
        if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then sudo="sudo"; fi
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1
    else
        echo "setup: install Mesa's Vulkan drivers (lavapipe) and the Vulkan loader for GPU tests" >&2
    fi
fi
