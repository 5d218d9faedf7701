"""The deployment targets side by side on this CPU (docs/targets.md's table): for each variant,
every export format written, its file size, its max |Δ| against PyTorch (the unfused model with
the sequential scan: validate's reference) and its latency at batch 1 through its own runtime,
at 1 and at 2 threads, all targets timed interleaved (one call of each in turn) on the runners
`validate` and `profile` use.

Targets: eager PyTorch (re-parameterized, parallel scan), onnx (ONNX Runtime), ort-arm and
ort-amd64 (.ort from the same ONNX, each --target-platform), pt2 (ExportedProgram), torchscript,
executorch (.pte, XNNPACK, its threadpool resized per column; when tinyvim[executorch] is
installed), aoti (only with --aoti: minutes of compiling per variant).

    python bench/targets_cpu.py [--variants s] [--iters 20] [--warmup 3] [--aoti] [--no-executorch]
                                [--size 224] [--json F]
"""
from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

import tinyvim
from _common import bench_parser, finish_report, interleaved
from tinyvim.backends.executorch.runner import ExecutorchRunner
from tinyvim.backends.ort.runner import OrtRunner
from tinyvim.backends.pt2.runner import ArtifactRunner
from tinyvim.backends.torch.runner import TorchRunner
from tinyvim.contract import InputSpec, ModelSpec
from tinyvim.errors import TinyvimError
from tinyvim.export import export_onnx
from tinyvim.export.aoti import export_aoti
from tinyvim.export.executorch import export_executorch, import_executorch
from tinyvim.export.ort_format import export_ort
from tinyvim.export.pt2 import export_pt2
from tinyvim.export.torchscript import export_torchscript


def export_all(v: str, model, tmp: Path, args) -> dict[str, tuple[Path, int]]:
    """name -> (file, bytes)."""
    spec, inputs = ModelSpec(v), InputSpec((args.size, args.size))
    files = {"onnx": export_onnx(tmp / f"{v}.onnx", spec, inputs, network=model).path}
    for platform in ("arm", "amd64"):
        files[f"ort-{platform}"] = export_ort(tmp / f"{v}-{platform}.ort", source_onnx=files["onnx"],
                                              target_platform=platform).path
    files["pt2"] = export_pt2(tmp / f"{v}.pt2", spec, inputs, network=model).path
    files["torchscript"] = export_torchscript(tmp / f"{v}.torchscript", spec, inputs, network=model).path
    try:
        if args.no_executorch:
            raise TinyvimError("--no-executorch")
        import_executorch()
        result = export_executorch(tmp / f"{v}.pte", spec, inputs, network=model)
        files["executorch"] = result.path
        print(f"  executorch: {result.op_counts['xnnpack_partitions']} XNNPACK partitions "
              f"({result.op_counts['xnnpack_nodes']} nodes), {result.num_nodes - result.op_counts['xnnpack_nodes']} "
              "nodes on portable kernels")
    except TinyvimError as exc:
        print(f"  executorch skipped: {exc}")
    if args.aoti:
        files["aoti"] = export_aoti(tmp / f"{v}-aoti.pt2", spec, inputs, network=model).path
    return {k: (p, p.stat().st_size) for k, p in files.items()}


def runners(v: str, model, files: dict, threads: int) -> dict:
    made = {"eager": TorchRunner(tinyvim.reparameterize(model), scan="parallel", name="eager")}
    for name, (path, _) in files.items():
        if name == "onnx" or name.startswith("ort-"):
            made[name] = OrtRunner(path, threads=threads, name=name)
        elif name == "executorch":
            made[name] = ExecutorchRunner(path, threads=threads)
        else:
            made[name] = ArtifactRunner(path, name, name=name)
    return made


def main() -> None:
    ap = bench_parser(__doc__)
    ap.set_defaults(variants="s")
    ap.add_argument("--aoti", action="store_true", help="also compile an AOTInductor package (minutes)")
    ap.add_argument("--no-executorch", action="store_true", help="leave out the .pte (minutes of lowering)")
    ap.add_argument("--size", type=int, default=224, help="image side (a multiple of 32)")
    args = ap.parse_args()
    report = {"env": {"torch": torch.__version__, "cpus": os.cpu_count(), "load_average_start": os.getloadavg()},
              "rows": []}
    x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for v in args.variants.split(","):
            model = tinyvim.create_model(v)
            with torch.inference_mode(), tinyvim.scan_implementation("sequential"):
                ref = model(torch.from_numpy(x)).numpy()
            files = export_all(v, model, tmp, args)
            ms: dict[int, dict[str, float]] = {}
            err: dict[str, float] = {}
            for threads in (1, 2):
                torch.set_num_threads(threads)       # the torch-run targets share the process setting
                active = runners(v, model, files, threads)
                for r in active.values():
                    r.activate()
                torch.set_num_threads(threads)
                try:
                    for name, r in active.items():
                        err[name] = float(np.abs(r.infer({"images": x})["logits"] - ref).max())
                    fns = {k: (lambda r=r: r.infer({"images": x})) for k, r in active.items()}
                    ms[threads] = {k: statistics.median(t) for k, t in interleaved(fns, args.iters, args.warmup).items()}
                finally:
                    for r in active.values():
                        r.deactivate()
            print(f"\nTinyViM-{v.upper()} {args.size}x{args.size}, batch 1 (median ms; max|Δ| vs PyTorch's sequential scan)")
            print(f"{'target':14}{'MiB':>8}{'max|Δ|':>10}{'1 thread':>10}{'2 threads':>11}")
            for name in ms[1]:
                size = files[name][1] / 2**20 if name in files else float("nan")
                print(f"{name:14}{size:>8.1f}{err[name]:>10.1e}{ms[1][name]:>10.1f}{ms[2][name]:>11.1f}")
                report["rows"].append({"variant": v, "target": name, "bytes": files[name][1] if name in files else None,
                                       "max_abs_err": err[name], "ms_1_thread": ms[1][name], "ms_2_threads": ms[2][name]})
    finish_report(report, args.json)


if __name__ == "__main__":
    main()
