#!/usr/bin/env bash
# Installs b2s with its optional parts (3D views: open3d; TensorBoard logs) and test tools, at the
# versions it is tested with (constraints.txt), on a fresh Debian/Ubuntu machine with Python 3.10+.
# As root it installs the system libraries itself; otherwise it prints the apt-get line to run.
set -euo pipefail
cd "$(dirname "$0")/.."

# open3d needs libusb and GL/EGL (headless rendering uses Mesa's EGL).
SYSTEM_PACKAGES="libusb-1.0-0 libgl1 libegl1 libgomp1"
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

# A torch already there stays (users with a GPU install their CUDA torch beforehand): then every
# pin but torch's applies. Otherwise torch comes at the tested version with the rest.
constraints=constraints.txt
if torch_version=$(python3 -c "import torch; print(torch.__version__)" 2>/dev/null); then
    constraints=$(mktemp)
    trap 'rm -f "$constraints"' EXIT
    grep -v '^torch==' constraints.txt > "$constraints"
    echo "keeping the installed torch $torch_version"
fi
python3 -m pip install -q -c "$constraints" -e ".[viz3d,tensorboard,ray,dev]"
echo "b2s installed: $(command -v b2s)"
