"""`python -m cuda_on_cpu check [--no-reference] [--fail-fast] LIB...` (with tests/ on sys.path): the check
suite on built kernel libraries, one JSON line per case x dtype (with "library") and one
{"library": ..., "done": true, "failed": n} line per library, after a {"library": ..., "start": true}
line. The mutation test runs its mutants' libraries through it in a separate process: a crashing
or hanging mutant cannot take the test process down; the last "start" without its "done" names
the library that crashed it (a guard-page fault also names the buffer on stderr)."""
from __future__ import annotations

import argparse
import json
import sys

from .cases import check_suite
from .device import load_library


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cuda_on_cpu")
    parser.add_argument("command", choices=["check"])
    parser.add_argument("libraries", nargs="+")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--fail-fast", action="store_true")
    args = parser.parse_args(argv)
    total = 0
    for path in args.libraries:
        print(json.dumps({"library": path, "start": True}), flush=True)
        lib = load_library(path)
        failed = 0
        for res in check_suite(lib, reference=not args.no_reference, fail_fast=args.fail_fast):
            failed += bool(res["problems"])
            print(json.dumps({"library": path, **res}), flush=True)
        print(json.dumps({"library": path, "done": True, "failed": failed}), flush=True)
        total += failed
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
