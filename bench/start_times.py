"""How long each `tinyvim` command takes to start: `--help` of the commands, a bad-input error
and `info`, each in a fresh interpreter, best of N (wall seconds, and user+sys CPU seconds,
which load on the machine disturbs less). With --base TREE, the same commands from another
checkout (e.g. a worktree of main) run interleaved with this one, so both see the same load.

    python bench/start_times.py [--repeat 7] [--base /path/to/other/checkout]

Run on a quiet machine for figures to report; say the load average (printed)."""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (["--help"], ["validate", "--help"], ["export", "--help"], ["profile", "--help"],
            ["validate", "/nonexistent.onnx"], ["info"])


def run_once(tree: Path, argv: list[str]) -> tuple[float, float]:
    """(wall, user+sys CPU) seconds of `python -m tinyvim.cli ARGV` with tree first on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tinyvim.cli", *argv], env=env, cwd=tree, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--base", type=Path, default=None, help="another checkout to time the same way")
    args = parser.parse_args()
    trees = {"this": ROOT} | ({"base": args.base.resolve()} if args.base else {})
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} at start; {os.cpu_count()} CPUs; "
          f"best of {args.repeat}", flush=True)
    print(f"{'tinyvim ...':<34}" + "".join(f"{n + ' wall':>12}{n + ' cpu':>12}" for n in trees), flush=True)
    for argv in COMMANDS:
        best = {name: [float("inf"), float("inf")] for name in trees}
        for _ in range(args.repeat):
            for name, tree in trees.items():          # interleaved: the same load for both trees
                wall, cpu = run_once(tree, argv)
                best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]
        print(f"{' '.join(argv):<34}" + "".join(f"{w:>11.2f}s{c:>11.2f}s" for w, c in best.values()), flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} at the end", flush=True)


if __name__ == "__main__":
    main()
