"""What the benchmarks share: their common flags, the interleaved timing loop and the end of a report."""
from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from tinyvim.utils import atomic_write_json


def bench_parser(doc: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="s,b,l")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    return ap


def interleaved(fns: dict[str, Callable[[], object]], iters: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds of each callable per call, the callables run in turn (a, b, a, b, …)
    so that drift in machine load hits all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + iters):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def finish_report(report: dict, json_path: str | None) -> None:
    """Record and print the load average at the end (a run that ends busy is suspect), then write
    the JSON through the safe writer, like every other report."""
    report["env"]["load_average_end"] = os.getloadavg()
    print(f"load average at the end: {report['env']['load_average_end'][0]:.1f}")
    if json_path:
        atomic_write_json(json_path, report)
