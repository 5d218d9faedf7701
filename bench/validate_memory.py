"""Peak memory of `tinyvim validate` against --batch (issue 26, item 9): before chunking it grew
linearly (6.0 GB at --batch 4096, 64x64); with validate's chunks it should stay near the peak of
one chunk whatever the batch.

    python bench/validate_memory.py [--batches 64,512,4096] [--size 64] [--json out.json]

Each batch runs in its own process (peak RSS of that process, from getrusage); the model is one
TinyViM-S export with a dynamic batch, random weights. Prints one line per batch; the ratio of the
largest to the smallest peak is the figure to look at (~1 flat, ~batch ratio linear)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import finish_report


#: run argv[1:] and print its peak RSS (KiB): a fresh parent per batch, so that getrusage's
#: "largest child so far" is that batch's process alone
_WRAP = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def peak_rss_mib(argv: list[str]) -> float:
    """Peak resident memory of one process running `argv`, in MiB."""
    out = subprocess.run([sys.executable, "-c", _WRAP, *argv], check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="64,512,4096")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    batches = sorted(int(b) for b in args.batches.split(","))
    tv = [sys.executable, "-m", "tinyvim.cli"]
    report = {"env": {"load_average_start": os.getloadavg()}, "size": args.size, "peak_rss_mib": {}}
    with tempfile.TemporaryDirectory(prefix="tinyvim-validate-memory-") as tmp:
        model = Path(tmp) / "s.onnx"
        subprocess.run([*tv, "export", "--img-size", str(args.size), "--dynamic-batch", "-o", str(model)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for b in batches:
            mib = peak_rss_mib([*tv, "validate", str(model), "--batch", str(b), "--num-inputs", "1",
                                "--threads", str(args.threads)])
            report["peak_rss_mib"][b] = mib
            print(f"--batch {b:5d} at {args.size}x{args.size}: peak RSS {mib:8.0f} MiB")
    peaks = report["peak_rss_mib"]
    print(f"largest / smallest peak: {peaks[batches[-1]] / peaks[batches[0]]:.2f} "
          f"(batch ratio {batches[-1] / batches[0]:.0f})")
    finish_report(report, args.json)


if __name__ == "__main__":
    main()
