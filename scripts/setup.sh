#!/usr/bin/env bash
# Create .venv with everything tinyvim and its tests need (CPU only).
# torch is pinned to the CPU build: an unpinned torch can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -qq --upgrade pip
.venv/bin/python -m pip install -qq "torch==2.13.0"
.venv/bin/python -m pip install -qq -e ".[cpu,test,serve]" "tritonclient[http,grpc]==2.73.0"
# tritonserver 2.51 (Python backend) for the real-server tests; --no-deps: only the binary is
# used, and the wheel's Python package would pull numpy<2 (55 MB download).
.venv/bin/python -m pip install -qq --no-deps "nvidia-pytriton==0.7.0"
