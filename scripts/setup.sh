#!/usr/bin/env bash
# Create .venv with everything tinyvim and its tests need (CPU only); about 2 minutes on a fresh
# machine (torch is the largest download), seconds when everything is already installed.
# torch is pinned to the CPU build: an unpinned torch can pull a multi-GB CUDA build.
# Each step says what it installs and how long it took; of pip's output only the packages it
# fetches or installs are shown (not -qq silence: minutes without a line look like a hang).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi

# step WHAT PIP-ARGS...: `pip install PIP-ARGS`, its progress in a few indented lines
step() {
    local what=$1 start=$SECONDS rc=0
    shift
    echo "setup: $what ..."
    .venv/bin/python -m pip install --progress-bar off "$@" 2>&1 |
        { grep --line-buffered -E '^ *(Collecting|Downloading|Installing collected|Successfully installed|ERROR|error|WARNING: .*(fail|error))' || true; } |
        sed -u -e 's/^ *//' -e 's/^Installing collected packages: /installing: /' -e 's/^Successfully installed /installed: /' -e 's/^/  /' ||
        rc=${PIPESTATUS[0]}       # (set -e would end the script here without saying which step)
    if [ "$rc" -ne 0 ]; then
        echo "setup: $what failed (pip exit status $rc)" >&2
        exit "$rc"
    fi
    echo "setup: $what done ($((SECONDS - start)) s)"
}

step "pip" --upgrade pip
step "torch (CPU build)" "torch==2.13.0"
step "tinyvim and its test/serve dependencies" -e ".[cpu,test,serve]" "tritonclient[http,grpc]==2.73.0"
# tritonserver 2.51 (Python backend) for the real-server tests; --no-deps: only the binary is
# used, and the wheel's Python package would pull numpy<2 (55 MB download).
step "tritonserver (nvidia-pytriton wheel)" --no-deps "nvidia-pytriton==0.7.0"
