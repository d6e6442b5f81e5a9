#!/usr/bin/env bash
# The test command of the README: installs everything, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash examples/install.sh
# One BLAS/OpenMP thread per process: the suite runs processes side by side on 2 cores.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
python3 -m pytest -q -p no:cacheprovider "$@"
