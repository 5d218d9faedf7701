#!/usr/bin/env bash
# GPU check of the scan kernel on a machine with an NVIDIA GPU, PyTorch (CUDA) and nvcc;
# no TensorRT, no network, repo not installed. From anywhere:
#   bash scripts/gpu_check.sh [REPORT_DIR]      (default: $OUT, else ./out)
# Builds the kernel for this GPU, checks it against the float64 reference, compares
# TinyViM S/B/L logits with the pure-PyTorch scan, benchmarks; writes gpu_check.json.
# Extra arguments after REPORT_DIR go to tinyvim.tools.gpu_check (e.g. --dry-run).
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPORT_DIR="${1:-${OUT:-$REPO/out}}"
shift || true
mkdir -p "$REPORT_DIR"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# Keep builds and caches out of the report folder (only the report comes back).
export TINYVIM_CACHE_DIR="${TINYVIM_CACHE_DIR:-${TMPDIR:-/tmp}/tinyvim_cache}"
PY="${PYTHON:-python3}"
cd "$REPO"
# Hard stop at 235 s so that the whole check fits a 4-minute slot; the report is
# rewritten after every section, so a stop keeps what finished.
timeout 235 "$PY" -m tinyvim.tools.gpu_check --json "$REPORT_DIR/gpu_check.json" \
    --build-dir "${TMPDIR:-/tmp}/tinyvim_gpu_check_build" --budget-s 170 "$@" 2>&1 | tee "$REPORT_DIR/gpu_check.log"
rc=${PIPESTATUS[0]}
echo "gpu_check exit status: $rc (report: $REPORT_DIR/gpu_check.json)"
exit "$rc"
