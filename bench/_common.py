"""What the benchmarks share: their common flags, the interleaved timing loop and the end of a report."""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from tinyvim.tools.timing import interleave, wall_clock
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
    """Milliseconds of each callable per call, the callables run in turn (a, b, a, b, …) after
    `warmup` untimed rounds: the package's loop (tinyvim.tools.timing), in the unit benches print."""
    rounds = interleave({name: wall_clock(fn) for name, fn in fns.items()}, warmup=warmup, iters=iters)
    return {name: [s * 1e3 for s in seconds] for name, seconds in rounds.items()}


def finish_report(report: dict, json_path: str | None) -> None:
    """Record and print the load average at the end (a run that ends busy is suspect), then write
    the JSON through the safe writer, like every other report."""
    report["env"]["load_average_end"] = os.getloadavg()
    print(f"load average at the end: {report['env']['load_average_end'][0]:.1f}")
    if json_path:
        atomic_write_json(json_path, report)
