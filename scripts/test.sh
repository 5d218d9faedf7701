#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Two workers, one test file each at a time (--dist loadfile keeps a file's module fixtures —
# exports, C++ builds — on one worker), handed out in collection order, which tests/conftest.py
# makes longest file first (--no-loadscope-reorder), so the workers finish together; each worker's
# process holds fewer native runtimes at once (one long single process once died of a SIGSEGV
# after loading ORT, OpenVINO, the fast scan and the PT2 runtimes; not seen with workers).
# --max-worker-restart=0: a crashed worker is not replaced; the other finishes and the run fails,
# naming the test the worker died in (by default xdist restarts workers and re-sends the crashing
# test, up to 8 times; one such run here hung at the end instead).
.venv/bin/python -m pytest -q -n "${TINYVIM_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder \
    --max-worker-restart=0 "$@"
