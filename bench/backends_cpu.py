"""Every CPU backend side by side, and the cost of one export for every resolution.

Part 1 (the README's benchmark table): for each variant and batch, the same weights and
inputs through torch (unfused + sequential scan: the original computation), torch-fused
(re-parameterized + parallel scan), ort (portable ONNX) and ov (the same ONNX on OpenVINO,
f32, and bf16 where the CPU offers it), timed interleaved (one call of each in turn) on the
tinyvim runners `profile` uses. Prints median ms, the ratio to torch, and max |Δ logits|
against torch. With --plugin (default on; --no-plugin leaves it out) also the plugin-flavour
export (one CrossSelectiveScan node per SS2D, on our fast CPU scan: ONNX Runtime's custom op,
the OpenVINO extension) in the same interleaved loop, `ort plugin` and `ov <p> plugin`, and
their plugin/portable ratios.

Part 2 (--dynamic): TinyViM-S exported once with --dynamic-size: node count and latency at
224 next to the fixed-size export (ORT and OpenVINO f32, interleaved); for every variant in
--dynamic-variants, max |Δ| of one dynamic file against PyTorch at 224, 256 and 320x256 on
both. With --backbone-check also the backbone at 512x512, fixed-size and dynamic exports.

    python bench/backends_cpu.py [--variants s,b,l] [--batches 1,8] [--iters 20] [--dynamic]
                                 [--dynamic-variants s,b,l] [--backbone-check] [--skip-backends]
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
from tinyvim.backends.ort.runner import OrtRunner
from tinyvim.backends.ov.runner import OvRunner, import_openvino, supported_precisions
from tinyvim.tools.profile import cpu_model
from tinyvim.backends.torch.runner import TorchRunner
from tinyvim.contract import InputSpec, ModelSpec
from tinyvim.export import export_onnx


def images(batch: int, size=(224, 224), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, *size)).astype(np.float32)


def reference(model, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode(), tinyvim.scan_implementation("sequential"):
        out = model(torch.from_numpy(x))
    return out.numpy() if isinstance(out, torch.Tensor) else [o.numpy() for o in out]


def ov_precisions() -> list[str]:
    return ["f32"] + (["bf16"] if "bf16" in supported_precisions(import_openvino().Core(), "CPU") else [])


def side_by_side(args, tmp: Path) -> list[dict]:
    rows = []
    precisions = ov_precisions()
    names = ["torch", "torch-fused", "ort", *[f"ov {p}" for p in precisions]]
    names += ["ort plugin", *[f"ov {p} plugin" for p in precisions]] if args.plugin else []
    print(f"\n{'variant':8}{'batch':>6}  " + "  ".join(f"{n:>16}" for n in names)
          + "   (median ms; ×: speed-up over torch)")
    for v in args.variants.split(","):
        model = tinyvim.create_model(v)
        path = export_onnx(tmp / f"{v}.onnx", ModelSpec(v), InputSpec(batch=None), network=model).path
        runners = {"torch": TorchRunner(model, scan="sequential", threads=args.threads),
                   "torch-fused": TorchRunner(tinyvim.reparameterize(model), scan="auto", threads=args.threads,
                                              name="torch-fused"),
                   "ort": OrtRunner(path, threads=args.threads),
                   **{f"ov {p}": OvRunner(path, precision=p, threads=args.threads, name=f"ov {p}") for p in precisions}}
        if args.plugin:
            plugin = export_onnx(tmp / f"{v}-plugin.onnx", ModelSpec(v), InputSpec(batch=None), scan="plugin",
                                 network=model).path
            runners["ort plugin"] = OrtRunner(plugin, threads=args.threads, name="ort plugin")
            runners.update({f"ov {p} plugin": OvRunner(plugin, precision=p, threads=args.threads, plugin_nodes=True,
                                                       name=f"ov {p} plugin") for p in precisions})
        for r in runners.values():
            r.activate()
        try:
            for b in (int(s) for s in args.batches.split(",")):
                x = images(b, seed=b)
                outs = {k: r.infer({"images": x})["logits"] for k, r in runners.items()}
                fns = {k: (lambda r=r: r.infer({"images": x})) for k, r in runners.items()}
                iters = args.iters if b == 1 else max(5, args.iters // 2)
                med = {k: statistics.median(t) for k, t in interleaved(fns, iters, args.warmup).items()}
                err = {k: float(np.abs(o - outs["torch"]).max()) for k, o in outs.items()}
                rows.append({"variant": v, "batch": b, "ms": med, "max_abs_err_vs_torch": err})
                cells = [f"{med[k]:8.1f} ({med['torch'] / med[k]:4.2f}×)" for k in runners]
                print(f"{v.upper():8}{b:>6}  " + "  ".join(f"{c:>16}" for c in cells), flush=True)
                print(f"{'':14}max|Δ| vs torch: " + ", ".join(f"{k} {e:.1e}" for k, e in err.items() if k != "torch"))
                if args.plugin:
                    print(f"{'':14}plugin / portable (ms ratio): " + ", ".join(
                        f"{k} {med[k + ' plugin'] / med[k]:.3f}" for k in ["ort", *[f"ov {p}" for p in precisions]]))
        finally:
            for r in runners.values():
                r.deactivate()
    return rows


def dynamic_vs_fixed(args, tmp: Path) -> dict:
    model = tinyvim.create_model("s")
    fixed = export_onnx(tmp / "s-fixed.onnx", ModelSpec("s"), InputSpec(batch=None), network=model)
    dynamic = export_onnx(tmp / "s-dynamic.onnx", ModelSpec("s"), InputSpec(None, None), network=model)
    print(f"\nTinyViM-S, one export for every size: {dynamic.num_nodes} nodes (fixed-size export at 224: "
          f"{fixed.num_nodes}, ratio {dynamic.num_nodes / fixed.num_nodes:.3f}); export {dynamic.seconds:.0f} s "
          f"vs {fixed.seconds:.0f} s")
    runners = {"ort fixed": OrtRunner(fixed.path, threads=args.threads, name="ort fixed"),
               "ort dynamic": OrtRunner(dynamic.path, threads=args.threads, name="ort dynamic"),
               "ov fixed": OvRunner(fixed.path, precision="f32", threads=args.threads, name="ov fixed"),
               "ov dynamic": OvRunner(dynamic.path, precision="f32", threads=args.threads, name="ov dynamic")}
    for r in runners.values():
        r.activate()
    result = {"nodes": {"fixed": fixed.num_nodes, "dynamic": dynamic.num_nodes},
              "export_s": {"fixed": fixed.seconds, "dynamic": dynamic.seconds}, "latency_224_ms": {}, "errors": {}}
    try:
        for b in (int(s) for s in args.batches.split(",")):
            x = images(b, seed=b)
            fns = {k: (lambda r=r: r.infer({"images": x})) for k, r in runners.items()}
            times = interleaved(fns, args.iters if b == 1 else max(5, args.iters // 2), args.warmup)
            # the minimum as well as the median: on a shared machine the fastest call is the
            # better estimate of what the graph itself costs
            med = {k: statistics.median(t) for k, t in times.items()}
            low = {k: min(t) for k, t in times.items()}
            result["latency_224_ms"][b] = {"median": med, "min": low}
            print(f"  224x224 batch {b}: median " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()) + " ms")
            print("    dynamic/fixed: " + ", ".join(
                f"{rt} {stat[f'{rt} dynamic'] / stat[f'{rt} fixed']:.3f} ({name})"
                for rt in ("ort", "ov") for name, stat in (("median", med), ("min", low))), flush=True)
    finally:
        for r in runners.values():
            r.deactivate()
    for v in args.dynamic_variants.split(","):
        vmodel = model if v == "s" else tinyvim.create_model(v)
        path = dynamic.path if v == "s" else export_onnx(tmp / f"{v}-dynamic.onnx", ModelSpec(v), InputSpec(None, None),
                                                         network=vmodel).path
        result["errors"][v] = size_errors(vmodel, path, args.threads, [(224, 224), (256, 256), (320, 256)])
    return result


def size_errors(model, path: Path, threads: int, sizes, batch: int = 2) -> dict:
    """max |Δ| / max |ref| against PyTorch of one file at each size, on ORT and OpenVINO f32
    (logits are O(1): for them that is about the absolute error; feature maps are O(10))."""
    errors = {}
    with OrtRunner(path, threads=threads) as ort_r, OvRunner(path, precision="f32", threads=threads) as ov_r:
        for size in sizes:
            x = images(batch, size, seed=size[0] + size[1])
            ref = reference(model, x)
            refs = [ref] if isinstance(ref, np.ndarray) else ref
            errors[f"{size[0]}x{size[1]}"] = err = {}
            for name, runner in (("ort", ort_r), ("ov f32", ov_r)):
                outs = list(runner.infer({"images": x}).values())
                err[name] = max(float(np.abs(o - r).max() / max(1.0, np.abs(r).max())) for o, r in zip(outs, refs))
            print(f"  {Path(path).stem} {size[0]}x{size[1]}: max|Δ| (relative to max(1, max|ref|)) vs PyTorch: "
                  + ", ".join(f"{k} {e:.1e}" for k, e in err.items()), flush=True)
    return errors


def backbone_512(args, tmp: Path) -> dict:
    model = tinyvim.create_model("s", backbone=True)
    fixed = export_onnx(tmp / "bb-512.onnx", ModelSpec("s", backbone=True), InputSpec((512, 512), 1), network=model)
    dynamic = export_onnx(tmp / "bb-dynamic.onnx", ModelSpec("s", backbone=True), InputSpec(None), network=model)
    print("\nbackbone S at 512x512 (feat0..feat3), fixed-size and dynamic-size exports:")
    return {name: size_errors(model, path, args.threads, [(512, 512)], batch=1)
            for name, path in (("fixed", fixed.path), ("dynamic", dynamic.path))}


def main():
    ap = bench_parser(__doc__)
    ap.add_argument("--dynamic", action="store_true", help="also part 2: dynamic-size vs fixed-size export")
    ap.add_argument("--dynamic-variants", default="s", help="variants whose dynamic export is checked at 3 sizes")
    ap.add_argument("--backbone-check", action="store_true", help="also the backbone at 512x512 (fixed and dynamic)")
    ap.add_argument("--skip-backends", action="store_true", help="skip part 1")
    ap.add_argument("--no-plugin", dest="plugin", action="store_false",
                    help="part 1 without the plugin-flavour rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ov = import_openvino()
    import onnxruntime
    env = {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__, "load_average": os.getloadavg(),
           "onnxruntime": onnxruntime.__version__, "openvino": ov.__version__.split("-")[0],
           "ov_precisions": ov_precisions()}
    print(f"CPU: {env['cpu']}; {args.threads} threads; torch {env['torch']}, onnxruntime {env['onnxruntime']}, "
          f"openvino {env['openvino']} (CPU precisions here: {', '.join(env['ov_precisions'])}); 224x224; "
          f"load average {env['load_average'][0]:.1f} (other processes share the cores: ratios, not absolute times)")
    report = {"env": env}
    with tempfile.TemporaryDirectory(prefix="tinyvim-bench-") as tmp:
        if not args.skip_backends:
            report["backends"] = side_by_side(args, Path(tmp))
        if args.dynamic:
            report["dynamic_size"] = dynamic_vs_fixed(args, Path(tmp))
        if args.backbone_check:
            report["backbone_512"] = backbone_512(args, Path(tmp))
    finish_report(report, args.json)


if __name__ == "__main__":
    main()
