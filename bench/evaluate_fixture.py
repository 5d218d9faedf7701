"""`tinyvim evaluate` on the trained digits fixture for every backend and precision here: top-1,
Δ vs PyTorch, images/s and peak RSS at 100, 360 (the whole held-out split: the accuracy figures)
and 10,000 pictures (without the reference: memory and speed; RSS should stay flat).

The 10,000 pictures are the 360 held-out digits written 28 times under new names (the same
pictures: what is measured is memory and speed at that count, not accuracy). Each evaluate runs
in a fresh process (`tinyvim evaluate ... --json`), its peak RSS read from os.wait4's rusage (through a
small launcher: see _LAUNCHER).

    PYTHONPATH=. python bench/evaluate_fixture.py [--threads 2] [--workers 2] [--large 10000] [--json PATH]

Needs scikit-learn (the test extra). Say the load average with any figure (printed at the end).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import bench_parser, finish_report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from digits_data import FIXTURE_CHECKPOINT, FIXTURE_SIZE, write_pictures  # noqa: E402
from tinyvim.backends.ov import cpu_bf16_missing  # noqa: E402
from tinyvim.contract import InputSpec, ModelSpec  # noqa: E402
from tinyvim.export import export_onnx  # noqa: E402
from tinyvim.tools.environment import environment  # noqa: E402
from tinyvim.tools.quantize import CalibrationRequest, cpu_has_vnni, quantize_onnx  # noqa: E402


#: Started through this small launcher, not straight from the bench: a process's ru_maxrss keeps the
#: high-water mark of the memory it had before exec - for a child forked from this bench (torch, the
#: exports and the quantizer loaded: ~790 MiB) every evaluate read the bench's own size. The launcher
#: (a bare interpreter, ~10 MiB) forks the evaluate, so wait4 gives the evaluate's own peak.
_LAUNCHER = ("import os, sys\n"
             "pid = os.spawnv(os.P_NOWAIT, sys.executable, [sys.executable, *sys.argv[1:]])\n"
             "_, status, usage = os.wait4(pid, 0)\n"
             "print(usage.ru_maxrss, file=sys.stderr)\n"
             "sys.exit(os.waitstatus_to_exitcode(status))\n")


def evaluate(args: list[str]) -> tuple[dict, float]:
    """One `tinyvim evaluate` in a fresh process: (its JSON report, its peak RSS in MiB)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        proc = subprocess.run([sys.executable, "-c", _LAUNCHER, "-m", "tinyvim.cli", "evaluate", *args, "--quiet",
                               "--json", out.name], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        err = proc.stderr.strip().splitlines()
        if proc.returncode != 0:
            raise SystemExit(f"evaluate {' '.join(args)} failed: {' '.join(err[:-1]) or err}")
        return json.loads(Path(out.name).read_text()), int(err[-1]) / 1024


def main() -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--large", type=int, default=10_000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tinyvim-evalbench-"))
    small, large = work / "small", work / "large"
    write_pictures(small, "heldout", "folders")
    write_pictures(large, "heldout", "folders", copies=-(-args.large // 360))
    onnx = work / "digits.onnx"
    export_onnx(onnx, ModelSpec("s", checkpoint=FIXTURE_CHECKPOINT), InputSpec(size=(FIXTURE_SIZE, FIXTURE_SIZE),
                                                                               batch=None))
    calib = work / "calib"
    write_pictures(calib, "train", "flat", limit=256)     # calibrate on training pictures, test on held-out
    (calib / "val.txt").unlink()
    weights7 = cpu_has_vnni() is False
    files = {"int8": work / "digits.int8.onnx", "fp8": work / "digits.fp8.onnx"}
    quantize_onnx(onnx, files["int8"], CalibrationRequest(calib_dir=calib), reduce_range=weights7)
    quantize_onnx(onnx, files["fp8"], CalibrationRequest(calib_dir=calib), dtype="fp8")
    common = ["--checkpoint", str(FIXTURE_CHECKPOINT), "--threads", str(args.threads), "--workers", str(args.workers)]
    rows = [("torch-fused fp32", ["--backend", "torch-fused", "--img-size", str(FIXTURE_SIZE)]),
            ("ORT fp32", [str(onnx), "--backend", "ort"]),
            ("ORT int8", [str(files["int8"]), "--backend", "ort"]),
            ("ORT fp8", [str(files["fp8"]), "--backend", "ort"]),
            ("OV f32", [str(onnx), "--backend", "ov", "--ov-precision", "f32"]),
            ("OV int8", [str(files["int8"]), "--backend", "ov"])]
    if not cpu_bf16_missing():
        rows.append(("OV bf16", [str(onnx), "--backend", "ov", "--ov-precision", "bf16"]))
    results = []
    print(f"{'row':<18} {'pictures':>8} {'top-1 %':>8} {'Δ pts':>7} {'images/s':>9} {'peak RSS MiB':>13}")
    for label, row_args in rows:
        for folder, limit in ((small, 100), (small, 360), (large, args.large)):
            report, rss = evaluate([*row_args, "--data", str(folder), "--limit", str(limit), *common,
                                    *(["--no-reference"] if folder == large else [])])
            delta = report["delta_top1_points"]
            results.append({"row": label, "pictures": report["data"]["pictures"], "top1": report["top1"],
                            "delta_top1_points": delta, "images_per_s": report["images_per_s"], "peak_rss_mib": rss})
            print(f"{label:<18} {report['data']['pictures']:>8} {report['top1'] * 100:>8.2f} "
                  f"{'-' if delta is None else format(delta, '+.2f'):>7} {report['images_per_s']:>9.1f} {rss:>13.0f}")
    finish_report({"env": environment(args.threads), "int8_weight_bits": 7 if weights7 else 8, "rows": results},
                  args.json)


if __name__ == "__main__":
    main()
