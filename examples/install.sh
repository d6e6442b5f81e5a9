#!/usr/bin/env bash
# Installs b2s and what it needs on a fresh Debian/Ubuntu machine that has only Python 3.10+.
# As root it installs the system libraries itself; otherwise it prints the apt-get line to run.
set -euo pipefail
cd "$(dirname "$0")/.."

# open3d needs libusb and GL/EGL (headless rendering uses Mesa's EGL); the HTML viewer test uses
# Debian's chromium.
SYSTEM_PACKAGES="libusb-1.0-0 libgl1 libegl1 libgomp1 chromium"
missing=""
for pkg in $SYSTEM_PACKAGES; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
        echo "installing system packages:$missing"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
        echo "please install the system packages first:  sudo apt-get install -y$missing" >&2
    fi
fi

# torch first, pinned: the CPU build 2.13.0 is what b2s is tested with, and an unpinned request
# could pull a multi-GB CUDA build. Users with a GPU install their CUDA torch beforehand.
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q "torch==2.13.0"
python3 -m pip install -q -e ".[dev]"
echo "b2s installed: $(command -v b2s)"
