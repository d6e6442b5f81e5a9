#!/usr/bin/env bash
# The test command of the README: installs everything, then runs the whole suite (or the pytest
# arguments given). Run without arguments, as CI does, it first checks that b2s installs, imports
# and starts on the oldest supported Python (3.10) when there is one.
set -euo pipefail
cd "$(dirname "$0")/.."
bash examples/install.sh

# Headless Chromium loads the HTML viewer in one test (skipped without it): a test tool, so it is
# installed here rather than by examples/install.sh.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
        echo "installing system packages: chromium"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
    else
        echo "headless Chromium is missing, so the HTML page test is skipped:  sudo apt-get install -y chromium" >&2
    fi
fi

# Python 3.10 in a throwaway venv: the package and its dependencies at the tested versions where
# they exist for 3.10, then the imports and `b2s --help`. torch is left out: PyPI's torch 2.13.0 for
# 3.10 is the CUDA build, 2.7 GB of downloads with its NVIDIA libraries and triton, and neither the
# imports nor --help need it (training on 3.10 is not tested). About 45-60 s, 750 MB on disk.
check_oldest_python() {
    local py="" candidate
    for candidate in python3.10 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python3.10; do
        # a pyenv shim exists even where its version is not selected: ask the interpreter itself
        if "$candidate" -c "import sys; sys.exit(sys.version_info[:2] != (3, 10))" 2>/dev/null; then
            py=$candidate
            break
        fi
    done
    if [ -z "$py" ]; then
        echo "Python 3.10 check skipped: no python3.10 on this machine"
        return
    fi
    local start=$SECONDS
    venv=$(mktemp -d)
    trap 'rm -rf "$venv"' EXIT  # also when a step fails and the script stops there
    "$py" -m venv "$venv"
    # built from a copy: an in-tree build leaves build/ behind, whose stale files later builds pick up
    mkdir "$venv/src"
    cp -r pyproject.toml README.md b2s_core b2s_cli converters "$venv/src/"
    "$venv/bin/pip" install -q --no-deps "$venv/src"
    # The declared dependencies, minus torch and the extras, as this Python's pip evaluates them.
    "$venv/bin/python" -c "import importlib.metadata as m; print('\n'.join(r for r in m.requires('b2s') \
        if 'extra ==' not in r and not r.startswith('torch')))" > "$venv/requirements.txt"
    # --no-warn-conflicts: pip would report the torch left out on purpose
    "$venv/bin/pip" install -q --no-warn-conflicts -c constraints.txt -r "$venv/requirements.txt"
    (cd "$venv" && bin/python -c "import b2s_core, b2s_cli, converters" && bin/b2s --help >/dev/null) || {
        echo "error: b2s does not import or start on Python 3.10 ($py)" >&2
        return 1
    }
    echo "Python 3.10: b2s installs, imports and starts ($((SECONDS - start)) s)"
}
if [ $# -eq 0 ]; then
    check_oldest_python
    # The linter (pyproject.toml [tool.ruff]): the whole tree, before the tests.
    python3 -m ruff check --no-cache .
fi

# One BLAS/OpenMP thread per process: the suite runs processes side by side on 2 cores.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
python3 -m pytest -q -p no:cacheprovider "$@"
