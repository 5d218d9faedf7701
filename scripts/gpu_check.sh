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
# The project's own environment when there is one (the system python3 usually lacks torch);
# $PYTHON overrides both.
if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"
elif [ -x "$REPO/.venv/bin/python" ]; then
    PY="$REPO/.venv/bin/python"
else
    PY=python3
fi
REPORT="$REPORT_DIR/gpu_check.json"
BEFORE="$(stat -c %y "$REPORT" 2>/dev/null || echo none)"
cd "$REPO"
# Hard stop at 235 s so that the whole check fits a 4-minute slot; the report is
# rewritten after every section, so a stop keeps what finished.
echo "gpu_check: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])' 2>&1))"
timeout 235 "$PY" -m tinyvim.tools.gpu_check --json "$REPORT" \
    --build-dir "${TMPDIR:-/tmp}/tinyvim_gpu_check_build" --budget-s 170 "$@" 2>&1 | tee "$REPORT_DIR/gpu_check.log"
rc=${PIPESTATUS[0]}
# Name the report only if this run wrote it (a failed start, e.g. no torch, writes none).
AFTER="$(stat -c %y "$REPORT" 2>/dev/null || echo none)"
if [ "$AFTER" != none ] && [ "$AFTER" != "$BEFORE" ]; then
    echo "gpu_check exit status: $rc (report: $REPORT)"
else
    echo "gpu_check exit status: $rc (no report written; log: $REPORT_DIR/gpu_check.log)"
fi
exit "$rc"
