"""Explicit int8 on this CPU: TinyViM-S quantized by `tinyvim quantize` against the fp32
backends and the original computation, timed interleaved, with the fidelity of each.

One fp32 export (224x224, dynamic batch) and, from it, int8 Q/DQ files (weights 8-bit, and
7-bit for CPUs without VNNI) and an fp8 one. For each batch the same inputs go through:
torch (unfused model + sequential scan: the original computation, validate's reference),
ort fp32, ov f32, ov bf16 (where the CPU offers it), ort int8 and ov int8 (the weight width
that suits this CPU: 7 bits without VNNI, else 8), one call of each in turn. Prints median ms,
the speed-up over torch, then cosine / max |Δ| / top-1 / top-5 of every output against torch
(fp8 and the other int8 width included, on ONNX Runtime; fidelity only).

    python bench/int8_cpu.py [--batches 1,8] [--iters 20] [--warmup 3] [--threads 2]
                             [--calib-random 32] [--json PATH]

Plugin flavour (--plugin, on by default; --no-plugin leaves it out): the same network exported with
--scan plugin (one CrossSelectiveScan node per SS2D: OpenVINO runs it through the tinyvim extension,
ONNX Runtime through its custom op, both on our fast CPU scan) and quantized the same way, timed in
the same interleaved loop as the portable files: `ort fp32 plugin`, `ov f32 plugin`, `ov int8
plugin` (and `ov bf16 plugin`). OpenVINO compiles each file for the batch timed (the runner's
default, --ov-shapes static); `ov int8 plugin dyn` is the same file compiled once for any batch.
Printed: each one's speed-up over torch, plugin/portable ratios side
by side, and OpenVINO per-layer profiles (PERF_COUNT) giving the scan's share of the time (lowered
scan nodes vs the one plugin node per SS2D) and the standalone FakeQuantize share, per flavour.

Random weights and random calibration images (no checkpoint or ImageNet here): the speeds are
real, the cosines are those of this random network (its logits are nearly flat, so its top-1
agreement says little; a trained checkpoint separates classes far more).
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
from tinyvim.tools.compare import DEFAULT_TOLERANCES, compare_output
from tinyvim.tools.inputs import iter_random_batches
from tinyvim.backends.ort.runner import OrtRunner
from tinyvim.backends.ov.loader import compile_config, new_core
from tinyvim.backends.ov.runner import OvRunner, import_openvino, supported_precisions
from tinyvim.contract import SCAN_PLUGIN
from tinyvim.tools.profile import cpu_model
from tinyvim.backends.torch.runner import TorchRunner
from tinyvim.contract import InputSpec, ModelSpec
from tinyvim.export import export_onnx
from tinyvim.tools.quantize import CalibrationRequest, cpu_has_vnni, quantize_onnx


def fidelity(ref: np.ndarray, out: np.ndarray) -> dict:
    """cosine (worst sample), max |Δ|, top-1 and top-5 agreement with the reference logits."""
    c = compare_output("logits", ref, out, DEFAULT_TOLERANCES["int8"])
    return {"cosine": c.cosine, "max_abs": c.max_abs_err, "top1": c.top1, "top5": c.top5}


def scan_outputs(plugin_onnx: Path) -> set[str]:
    """Output names of the plugin nodes: the portable lowering names its nodes '<that name>/…'."""
    import onnx
    graph = onnx.load(str(plugin_onnx), load_external_data=False).graph
    return {n.output[0] for n in graph.node if n.op_type == SCAN_PLUGIN.op_type}


def ov_shares(ov, path: Path, plugin: bool, precision: str, x: np.ndarray, threads: int, scans: set[str],
              iters: int = 5, static: bool = True) -> dict:
    """OpenVINO per-layer profile (PERF_COUNT) of `path`: total ms per inference, the shares of
    the scan (plugin node, or the nodes of its lowering) and of standalone FakeQuantize layers
    (those OpenVINO did not fuse into another layer), and those layers' ms per inference by name."""
    core = new_core(ov, path, plugin)
    config = {**compile_config("CPU", precision, threads, None), "PERF_COUNT": True}
    model = core.read_model(str(path))
    if static:     # compiled for the shape timed, as OvRunner does (--ov-shapes static)
        model.reshape({0: list(x.shape)})
    request = core.compile_model(model, "CPU", config).create_infer_request()
    totals: dict[str, float] = {"all": 0.0, "scan": 0.0, "fakequantize": 0.0, "subgraph": 0.0}
    fq_layers: dict[str, float] = {}
    for _ in range(iters):
        request.infer({0: x})
        for layer in request.get_profiling_info():
            ms = layer.real_time.total_seconds() * 1e3
            totals["all"] += ms
            name = layer.node_name
            # the extension's op runs as the CPU plugin's "Reference" layer (nothing else here does)
            if layer.node_type in (SCAN_PLUGIN.op_type, "Reference") or any(name == s or name.startswith(s + "/") for s in scans):
                totals["scan"] += ms
            elif layer.node_type == "FakeQuantize":
                totals["fakequantize"] += ms
                fq_layers[name] = fq_layers.get(name, 0.0) + ms / iters
            elif layer.node_type == "Subgraph":
                # the CPU plugin's fused element-wise chains (snippets): in a graph compiled for one
                # shape, the standalone FakeQuantize layers end up inside these
                totals["subgraph"] += ms
    return {"ms": totals["all"] / iters, "scan_share": totals["scan"] / max(totals["all"], 1e-9),
            "fakequantize_share": totals["fakequantize"] / max(totals["all"], 1e-9),
            "subgraph_share": totals["subgraph"] / max(totals["all"], 1e-9), "fakequantize_layers": fq_layers}


def main():
    ap = bench_parser(__doc__)
    ap.set_defaults(variants="s")
    ap.add_argument("--calib-random", type=int, default=32, help="random calibration images")
    ap.add_argument("--no-plugin", dest="plugin", action="store_false", help="leave out the plugin flavour")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ov = import_openvino()
    import onnxruntime
    vnni = cpu_has_vnni()
    cpu_bits = 8 if vnni else 7
    precisions = supported_precisions(ov.Core(), "CPU")
    env = {"cpu": cpu_model(), "threads": args.threads, "vnni": vnni, "ov_precisions": precisions,
           "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
           "openvino": ov.__version__.split("-")[0], "load_average": os.getloadavg()}
    print(f"CPU: {env['cpu']} (VNNI: {vnni}; OpenVINO CPU precisions: {', '.join(precisions)}); {args.threads} "
          f"threads; torch {env['torch']}, onnxruntime {env['onnxruntime']}, openvino {env['openvino']}; "
          f"load average {env['load_average'][0]:.1f}")
    report = {"env": env, "rows": []}
    with tempfile.TemporaryDirectory(prefix="tinyvim-int8-") as tmp:
        tmp = Path(tmp)
        model = tinyvim.create_model("s")
        fp32 = export_onnx(tmp / "s.onnx", ModelSpec("s"), InputSpec(batch=None), network=model).path
        files = {}
        for name, dtype, bits in (("int8 w8", "int8", 8), ("int8 w7", "int8", 7), ("fp8", "fp8", 8)):
            r = quantize_onnx(fp32, tmp / f"s.{name.replace(' ', '-')}.onnx",
                              CalibrationRequest(calib_random=args.calib_random), dtype=dtype,
                              reduce_range=bits == 7, threads=args.threads)
            files[name] = r.path
            print(f"quantized {name}: {len(r.quantized)} layers, {r.seconds['total']:.1f} s "
                  f"(calibration {r.seconds['calibration']:.1f} s)")
        cpu_int8 = files[f"int8 w{cpu_bits}"]
        if args.plugin:
            plugin = export_onnx(tmp / "s-plugin.onnx", ModelSpec("s"), InputSpec(batch=None), scan="plugin",
                                 network=model).path
            plugin_int8 = quantize_onnx(plugin, tmp / "s-plugin.int8.onnx",
                                        CalibrationRequest(calib_random=args.calib_random), reduce_range=cpu_bits == 7, threads=args.threads).path
            scans = scan_outputs(plugin)
        timed = {"torch": TorchRunner(model, scan="sequential", threads=args.threads),
                 "ort fp32": OrtRunner(fp32, threads=args.threads, name="ort fp32"),
                 "ov f32": OvRunner(fp32, precision="f32", threads=args.threads, name="ov f32"),
                 **({"ov bf16": OvRunner(fp32, precision="bf16", threads=args.threads, name="ov bf16")}
                    if "bf16" in precisions else {}),
                 "ort int8": OrtRunner(cpu_int8, threads=args.threads, name="ort int8"),
                 "ov int8": OvRunner(cpu_int8, precision="f32", threads=args.threads, name="ov int8")}
        if args.plugin:    # interleaved with the portable files, in the same loop
            timed.update({
                "ort fp32 plugin": OrtRunner(plugin, threads=args.threads, name="ort fp32 plugin"),
                "ov f32 plugin": OvRunner(plugin, precision="f32", threads=args.threads, plugin_nodes=True,
                                          name="ov f32 plugin"),
                **({"ov bf16 plugin": OvRunner(plugin, precision="bf16", threads=args.threads, plugin_nodes=True,
                                               name="ov bf16 plugin")} if "bf16" in precisions else {}),
                "ov int8 plugin": OvRunner(plugin_int8, precision="f32", threads=args.threads, plugin_nodes=True,
                                           name="ov int8 plugin"),
                # the OpenVINO rows are compiled for the batch timed (--ov-shapes static); this one
                # keeps the export's dynamic batch, to show what that costs
                "ov int8 plugin dyn": OvRunner(plugin_int8, precision="f32", threads=args.threads, plugin_nodes=True,
                                               shapes="dynamic", name="ov int8 plugin dyn")})
        other = {f"ort int8 w{15 - cpu_bits}": OrtRunner(files[f"int8 w{15 - cpu_bits}"], threads=args.threads),
                 f"ov int8 w{15 - cpu_bits}": OvRunner(files[f"int8 w{15 - cpu_bits}"], precision="f32",
                                                       threads=args.threads),
                 "ort fp8": OrtRunner(files["fp8"], threads=args.threads),
                 "ov fp8": OvRunner(files["fp8"], precision="f32", threads=args.threads)}
        print(f"int8 timed: weights {cpu_bits}-bit ({'VNNI' if vnni else 'no VNNI: 8-bit weights saturate'})")
        for r in (*timed.values(), *other.values()):
            r.activate()
        try:
            for b in (int(s) for s in args.batches.split(",")):
                x = next(iter_random_batches(1, b, (224, 224), seed=100 + b))
                outs = {k: r.infer({"images": x})["logits"] for k, r in {**timed, **other}.items()}
                fid = {k: fidelity(outs["torch"], o) for k, o in outs.items() if k != "torch"}
                fns = {k: (lambda r=r: r.infer({"images": x})) for k, r in timed.items()}
                times = interleaved(fns, args.iters if b == 1 else max(5, args.iters // 2), args.warmup)
                med = {k: statistics.median(t) for k, t in times.items()}
                low = {k: min(t) for k, t in times.items()}
                report["rows"].append({"batch": b, "ms": med, "min_ms": low, "fidelity": fid})
                # the minimum as well as the median: on a shared machine the fastest call is the
                # better estimate of what the graph itself costs (torch's OpenMP pool suffers most
                # when other processes hold the cores)
                for label, stat in (("median", med), ("min", low)):
                    print(f"\nbatch {b}, {label} ms (speed-up over torch, the original computation)")
                    print("  " + "  ".join(f"{k} {stat[k]:.1f} ({stat['torch'] / stat[k]:.2f}x)" for k in timed))
                    print(f"  int8 vs ort fp32: ort {stat['ort fp32'] / stat['ort int8']:.2f}x, "
                          f"ov {stat['ort fp32'] / stat['ov int8']:.2f}x; ov int8 vs ov f32 "
                          f"{stat['ov f32'] / stat['ov int8']:.2f}x")
                if args.plugin:
                    print("  plugin / portable (median ms ratio; < 1: the plugin flavour is faster): " + ", ".join(
                        f"{k} {med[f'{k} plugin'] / med[k]:.3f}" for k in ("ort fp32", "ov f32", "ov bf16", "ov int8")
                        if f"{k} plugin" in med))
                    shares = {}
                    for name, path, plug, prec in (("ov f32", fp32, False, "f32"), ("ov f32 plugin", plugin, True, "f32"),
                                                   ("ov int8", cpu_int8, False, "f32"),
                                                   ("ov int8 plugin", plugin_int8, True, "f32")):
                        shares[name] = ov_shares(ov, path, plug, prec, x, args.threads, scans)
                    report["rows"][-1]["ov_profile"] = shares
                    print("  OpenVINO per-layer profile (PERF_COUNT, sum of layer times): " + "; ".join(
                        f"{k} {v['ms']:.1f} ms, scan {100 * v['scan_share']:.1f} %, FakeQuantize "
                        f"{100 * v['fakequantize_share']:.1f} %, fused element-wise (Subgraph) "
                        f"{100 * v['subgraph_share']:.1f} %" for k, v in shares.items()))
                print("  fidelity vs torch (cosine worst sample / max|Δ| / top-1 / top-5):")
                for k, f in fid.items():
                    print(f"    {k:14s} {f['cosine']:.6f}  {f['max_abs']:.2e}  {f['top1']:.3f}  {f['top5']:.3f}")
        finally:
            for r in (*timed.values(), *other.values()):
                r.deactivate()
    finish_report(report, args.json)


if __name__ == "__main__":
    main()
