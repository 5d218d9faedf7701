"""ONNX Runtime CPU vs PyTorch eager on the original computation, same weights.

For S/B/L at batch 1 and 8 on 2 threads: PyTorch eager running the unfused model with
the sequential scan (what the official code computes) against ONNX Runtime running our
portable export (re-parameterized, parallel scan lowering). Calls are interleaved
(torch, ort, torch, ort, …) so machine drift hits both alike; ORT idle spinning is
off so it cannot steal cores from the torch calls. Prints medians and their ratio.

Then, for TinyViM-S, the portable-scan lowerings we tried: node count, latency at
batch 1 and 8, and max |Δ logits| against PyTorch.

    python bench/onnx_cpu.py [--variants s,b,l] [--batches 1,8] [--iters 20] [--lowerings parallel,sequential]
"""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import tinyvim
from tinyvim.contract import InputSpec, ModelSpec
from tinyvim.export import export_onnx
from tinyvim.utils import atomic_write_json
from _common import bench_parser, interleaved


def session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def medians(fns: dict, iters: int, warmup: int) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in interleaved(fns, iters, warmup).items()}


def main():
    ap = bench_parser(__doc__)
    ap.add_argument("--lowerings", default="parallel,sequential")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    report = {"env": {"torch": torch.__version__, "onnxruntime": ort.__version__, "threads": args.threads},
              "backends": [], "lowerings": []}
    tmp = Path(tempfile.mkdtemp(prefix="tinyvim-bench-"))
    print(f"torch {torch.__version__} / onnxruntime {ort.__version__}, {args.threads} threads, 224x224 fp32")
    print(f"{'variant':8}{'batch':>6}  {'torch eager (orig) ms':>22}  {'ORT portable ms':>16}  {'speedup':>8}")
    models = {}
    for v in args.variants.split(","):
        model = tinyvim.create_model(v)
        models[v] = model
        path = export_onnx(tmp / f"{v}.onnx", ModelSpec(v), InputSpec(batch=None), network=model).path
        sess = session(path, args.threads)
        for b in batches:
            x = np.random.default_rng(b).standard_normal((b, 3, 224, 224)).astype(np.float32)
            xt = torch.from_numpy(x)

            def run_torch():
                with torch.inference_mode(), tinyvim.scan_implementation("sequential"):
                    model(xt)
            iters = args.iters if b == 1 else max(5, args.iters // 2)
            t = medians({"torch": run_torch, "ort": lambda: sess.run(None, {"images": x})}, iters, args.warmup)
            row = {"variant": v, "batch": b, "torch_ms": t["torch"], "ort_ms": t["ort"], "speedup": t["torch"] / t["ort"]}
            report["backends"].append(row)
            print(f"{v.upper():8}{b:>6}  {t['torch']:>22.1f}  {t['ort']:>16.1f}  {row['speedup']:>7.2f}x", flush=True)

    print("\nportable-scan lowerings, TinyViM-S (latency: median ms on ORT CPU)")
    print(f"{'lowering':12}{'nodes':>7}  " + "  ".join(f"{'b' + str(b):>8}" for b in batches) + f"  {'max|Δ| vs torch':>16}")
    model = models.get("s") or tinyvim.create_model("s")
    x8 = np.random.default_rng(0).standard_normal((max(batches), 3, 224, 224)).astype(np.float32)
    with torch.inference_mode(), tinyvim.scan_implementation("sequential"):
        ref = model(torch.from_numpy(x8)).numpy()
    for lowering in args.lowerings.split(","):
        res = export_onnx(tmp / f"s-{lowering}.onnx", ModelSpec("s"), InputSpec(batch=None), lowering=lowering, network=model)
        sess = session(res.path, args.threads)
        err = float(np.abs(sess.run(None, {"images": x8})[0] - ref).max())
        lat = {}
        for b in batches:
            xb = x8[:b]
            lat[b] = medians({"ort": lambda: sess.run(None, {"images": xb})}, max(5, args.iters // 2), args.warmup)["ort"]
        report["lowerings"].append({"lowering": lowering, "nodes": res.num_nodes, "latency_ms": lat, "max_abs_err": err})
        print(f"{lowering:12}{res.num_nodes:>7}  " + "  ".join(f"{lat[b]:>8.1f}" for b in batches) + f"  {err:>16.2e}",
              flush=True)
    if args.json:
        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
