"""Q/DQ placement of `tinyvim quantize` (--placement lean vs all) on both scan flavours: OpenVINO int8
speed and standalone FakeQuantize share, and accuracy on the trained digits fixture.

Speed (TinyViM-S, random weights, 224x224, dynamic batch): the portable and the plugin export,
each quantized with both placements (random calibration; 7-bit weights on a CPU without VNNI, else
8). For each batch the four files run on OpenVINO (CPU, int8 from the Q/DQ), timed interleaved:
median ms, lean/all per flavour. Then each file's per-layer profile (PERF_COUNT, sum of layer times):
the scan's share, the share of the FakeQuantize layers that run on their own (a Q/DQ OpenVINO could
not fold into the layer before it) and how many there are, the heaviest of them by name (--top),
and the logits' cosine against PyTorch (the original computation, worst sample).

Accuracy (tests/data/tinyvim_s_digits64.pth at 64x64, its 360 held-out pictures): both flavours x
both placements, calibrated on 256 training pictures (--calib, as a user would), top-1 on OpenVINO
int8 and ONNX Runtime int8 next to the fp32 export and PyTorch (tinyvim.tools.evaluate).

    python bench/qdq_placement.py [--batches 1,8] [--iters 20] [--warmup 3] [--threads 2]
                                  [--calib-random 32] [--top 8] [--skip-speed] [--skip-accuracy] [--json PATH]
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

import tinyvim
from _common import bench_parser, finish_report, interleaved
from int8_cpu import fidelity, ov_shares, scan_outputs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from digits_data import FIXTURE_CHECKPOINT, FIXTURE_SIZE, write_pictures  # noqa: E402
from tinyvim.backends.ov.runner import OvRunner, import_openvino  # noqa: E402
from tinyvim.backends.torch.runner import TorchRunner  # noqa: E402
from tinyvim.contract import QDQ_PLACEMENTS, InputSpec, ModelSpec  # noqa: E402
from tinyvim.export import export_onnx  # noqa: E402
from tinyvim.tools.evaluate import evaluate_model  # noqa: E402
from tinyvim.tools.inputs import iter_random_batches  # noqa: E402
from tinyvim.tools.profile import cpu_model  # noqa: E402
from tinyvim.tools.quantize import CalibrationRequest, cpu_has_vnni, quantize_onnx  # noqa: E402

FLAVOURS = ("portable", "plugin")


def quantized_files(folder: Path, spec: ModelSpec, inputs: InputSpec, calibration: CalibrationRequest,
                    weights7: bool, threads: int, network=None) -> dict[tuple[str, str], tuple[Path, object]]:
    """{(flavour, placement): (int8 file, QuantizeResult)}, plus (flavour, 'fp32'): the export."""
    files = {}
    for flavour in FLAVOURS:
        fp32 = export_onnx(folder / f"{flavour}.onnx", spec, inputs, scan=flavour, network=network).path
        files[(flavour, "fp32")] = (fp32, None)
        for placement in QDQ_PLACEMENTS:
            r = quantize_onnx(fp32, folder / f"{flavour}.{placement}.int8.onnx", calibration, reduce_range=weights7,
                              threads=threads, placement=placement)
            files[(flavour, placement)] = (r.path, r)
            print(f"  {flavour:8s} --placement {placement:4s}: {len(r.quantized)} layers quantized, "
                  f"{sum(r.op_counts.get(k, 0) for k in ('QuantizeLinear', 'DequantizeLinear'))} Q/DQ nodes, "
                  f"kept fp32: {len(r.kept_fp32)}")
    return files


def speed(args, ov, weights7: bool, report: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="tinyvim-placement-") as tmp:
        model = tinyvim.create_model("s")
        files = quantized_files(Path(tmp), ModelSpec("s"), InputSpec(batch=None),
                                CalibrationRequest(calib_random=args.calib_random), weights7, args.threads, model)
        scans = scan_outputs(files[("plugin", "fp32")][0])
        runners = {f"{flavour} {placement}": OvRunner(files[(flavour, placement)][0], precision="f32",
                                                      threads=args.threads, plugin_nodes=flavour == "plugin",
                                                      name=f"ov int8 {flavour} {placement}")
                   for flavour in FLAVOURS for placement in QDQ_PLACEMENTS}
        torch_runner = TorchRunner(model, scan="sequential", threads=args.threads)
        for r in (*runners.values(), torch_runner):
            r.activate()
        try:
            for b in (int(s) for s in args.batches.split(",")):
                x = next(iter_random_batches(1, b, (224, 224), seed=100 + b))
                ref = torch_runner.infer({"images": x})["logits"]
                fid = {k: fidelity(ref, r.infer({"images": x})["logits"]) for k, r in runners.items()}
                times = interleaved({k: (lambda r=r: r.infer({"images": x})) for k, r in runners.items()},
                                    args.iters if b == 1 else max(5, args.iters // 2), args.warmup)
                med = {k: statistics.median(t) for k, t in times.items()}
                row = {"batch": b, "ms": med, "fidelity": fid, "profile": {}}
                print(f"\nbatch {b}: OpenVINO int8, median ms (lean / all)")
                for flavour in FLAVOURS:
                    lean, full = med[f"{flavour} lean"], med[f"{flavour} all"]
                    print(f"  {flavour:8s} all {full:7.2f}  lean {lean:7.2f}  ({lean / full:.3f})")
                print("  per-layer profile (PERF_COUNT): total ms, scan %, standalone FakeQuantize % (layers); "
                      "cosine vs torch")
                for flavour in FLAVOURS:
                    for placement in QDQ_PLACEMENTS:
                        key = f"{flavour} {placement}"
                        # the dynamic-shape compilation: there each activation Q/DQ pair stays a
                        # FakeQuantize layer of its own (a static one folds them into Subgraphs)
                        p = ov_shares(ov, files[(flavour, placement)][0], flavour == "plugin", "f32", x,
                                      args.threads, scans, static=False)
                        row["profile"][key] = p
                        heavy = sorted(p["fakequantize_layers"].items(), key=lambda kv: -kv[1])[:args.top]
                        print(f"  {key:13s} {p['ms']:7.2f} ms  scan {100 * p['scan_share']:5.1f} %  FakeQuantize "
                              f"{100 * p['fakequantize_share']:5.1f} % ({len(p['fakequantize_layers'])})  cosine "
                              f"{fid[key]['cosine']:.6f}")
                        print("      heaviest FakeQuantize: " + ", ".join(f"{n} {ms:.3f}" for n, ms in heavy))
                report["speed"].append(row)
        finally:
            for r in (*runners.values(), torch_runner):
                r.deactivate()


def accuracy(args, weights7: bool, report: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="tinyvim-placement-acc-") as tmp:
        tmp = Path(tmp)
        heldout, calib = tmp / "heldout", tmp / "calib"
        write_pictures(heldout, "heldout", "folders")
        write_pictures(calib, "train", "flat", limit=256)     # calibrate on training pictures, test on held-out
        (calib / "val.txt").unlink()
        files = quantized_files(tmp, ModelSpec("s", checkpoint=FIXTURE_CHECKPOINT),
                                InputSpec(size=(FIXTURE_SIZE, FIXTURE_SIZE), batch=None),
                                CalibrationRequest(calib_dir=calib), weights7, args.threads)
        print(f"\ndigits fixture, {FIXTURE_SIZE}x{FIXTURE_SIZE}, held-out top-1 % (Δ points vs PyTorch)")
        for flavour in FLAVOURS:
            for placement in ("fp32", *QDQ_PLACEMENTS):
                for backend in ("ort", "ov"):
                    r = evaluate_model(files[(flavour, placement)][0], data=heldout, backend=backend,
                                       threads=args.threads, log=lambda m: None)
                    report["accuracy"].append({"flavour": flavour, "placement": placement, "backend": backend,
                                               "top1": r["top1"], "delta_top1_points": r["delta_top1_points"],
                                               "top1_agreement": r["top1_agreement"]})
                    print(f"  {flavour:8s} {placement:5s} {backend:4s} {100 * r['top1']:6.2f} "
                          f"({r['delta_top1_points']:+.2f}; agreement with PyTorch {100 * r['top1_agreement']:.1f} %)")


def main():
    ap = bench_parser(__doc__)
    ap.add_argument("--calib-random", type=int, default=32, help="random calibration images (speed part)")
    ap.add_argument("--top", type=int, default=8, help="heaviest standalone FakeQuantize layers to name")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ov = import_openvino()
    weights7 = cpu_has_vnni() is False
    report = {"env": {"cpu": cpu_model(), "threads": args.threads, "vnni": cpu_has_vnni(),
                      "openvino": ov.__version__.split("-")[0], "load_average": os.getloadavg()},
              "speed": [], "accuracy": []}
    print(f"CPU: {report['env']['cpu']} (VNNI: {report['env']['vnni']}; int8 weights {7 if weights7 else 8}-bit); "
          f"{args.threads} threads; openvino {report['env']['openvino']}; load average {os.getloadavg()[0]:.1f}")
    if not args.skip_speed:
        speed(args, ov, weights7, report)
    if not args.skip_accuracy:
        accuracy(args, weights7, report)
    finish_report(report, args.json)


if __name__ == "__main__":
    main()
