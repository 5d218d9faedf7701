"""How fast this CPU could run TinyViM-S at all: the ceiling behind the int8 speed goal.

The int8 issue asks for >= 6x the original computation at S batch 8. Whether that is within
reach depends on the CPU's multiply-accumulate throughput, so this measures it here, side by
side in one run:

1. the CPU's GEMM throughput on a large square product (2 threads by default), fp32 (ONNX
   Runtime MatMul, MLAS) and int8 (ONNX Runtime MatMulInteger u8 x s8, MLAS's int8 kernels,
   which use VNNI/AMX where the CPU has them and vpmaddubsw otherwise): the most any runtime
   here gets out of this CPU per multiply-accumulate;
2. TinyViM-S's multiply-accumulates by layer kind (forward hooks on the fused model);
3. the original computation (torch, unfused + sequential scan) and the int8 Q/DQ file on
   OpenVINO (the fastest validated backend here) at the batch, with OpenVINO's per-layer
   profile split into convolutions and everything else.

It prints the time the goal allows, the time the convolutions alone would take at the large-GEMM
int8 throughput (a floor: 1x1 convolutions with 48-224 channels never reach it), and what the
rest of the network takes today; the goal is out of reach on this CPU when floor + rest exceed
the allowance.

    python bench/cpu_ceiling.py [--batch 8] [--goal 6] [--threads 2] [--iters 10] [--json PATH]
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

import tinyvim
from _common import interleaved
from tinyvim.backends.ort.loader import import_onnxruntime
from tinyvim.backends.ov.runner import OvRunner, import_openvino
from tinyvim.backends.torch.runner import TorchRunner
from tinyvim.contract import InputSpec, ModelSpec
from tinyvim.export import export_onnx
from tinyvim.tools.inputs import iter_random_batches
from tinyvim.tools.noise import NoiseMonitor, NoiseReport, relative_spread
from tinyvim.tools.profile import cpu_model
from tinyvim.tools.quantize import CalibrationRequest, cpu_has_vnni, quantize_onnx
from tinyvim.utils import atomic_write_json

GEMM = 1536      # large enough that packing and threading overheads vanish, small enough for a few seconds


def gemm_model(int8: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    if int8:
        w = numpy_helper.from_array(rng.integers(-63, 64, (GEMM, GEMM)).astype(np.int8), "w")
        node, a_type, y_type = helper.make_node("MatMulInteger", ["a", "w"], ["y"]), TensorProto.UINT8, TensorProto.INT32
    else:
        w = numpy_helper.from_array(rng.standard_normal((GEMM, GEMM)).astype(np.float32), "w")
        node, a_type, y_type = helper.make_node("MatMul", ["a", "w"], ["y"]), TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("a", a_type, [GEMM, GEMM])],
                              [helper.make_tensor_value_info("y", y_type, [GEMM, GEMM])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def gemm_throughput(threads: int, iters: int) -> dict[str, float]:
    """GMAC/s of a GEMM x GEMM x GEMM product, fp32 and u8 x s8, best of `iters` calls."""
    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    rng = np.random.default_rng(1)
    inputs = {"fp32": rng.standard_normal((GEMM, GEMM)).astype(np.float32),
              "int8": rng.integers(0, 128, (GEMM, GEMM)).astype(np.uint8)}
    sessions = {k: ort.InferenceSession(gemm_model(k == "int8").SerializeToString(), opts,
                                        providers=["CPUExecutionProvider"]) for k in inputs}
    times = interleaved({k: (lambda k=k: sessions[k].run(None, {"a": inputs[k]})) for k in inputs}, iters, 2)
    return {k: GEMM ** 3 / (min(t) / 1e3) / 1e9 for k, t in times.items()}


def macs_by_kind(model: torch.nn.Module) -> dict[str, int]:
    """Multiply-accumulates of one 224x224 image per layer kind (convolutions by shape, linear)."""
    macs: collections.Counter = collections.Counter()

    def hook(mod, _inp, out):
        per_image = out.numel() // out.shape[0]
        if isinstance(mod, torch.nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            kind = "depthwise conv" if mod.groups > 1 else ("1x1 conv" if k == 1 else "kxk conv")
            macs[kind] += per_image * (mod.in_channels // mod.groups) * k
        elif isinstance(mod, torch.nn.Linear):
            macs["linear"] += per_image * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    for h in handles:
        h.remove()
    return dict(macs)


def ov_layer_split(path: Path, x: np.ndarray, threads: int) -> dict[str, float]:
    """OpenVINO's own per-layer times (ms, one call after warm-up) summed: convolutions, the rest."""
    ov = import_openvino()
    compiled = ov.Core().compile_model(os.fspath(path), "CPU", {
        "PERF_COUNT": "YES", "INFERENCE_NUM_THREADS": str(threads), "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    for _ in range(3):
        request.infer({0: x})
    split = {"conv": 0.0, "rest": 0.0}
    for layer in request.profiling_info:
        split["conv" if "Convolution" in layer.node_type else "rest"] += layer.real_time.total_seconds() * 1e3
    return split


def ceiling_verdict(best: float, goal: float, noise: NoiseReport, *, batch: int, threads: int) -> str:
    """The conclusion with the conditions it holds under - and none at all from a busy machine
    (a loaded run once concluded 'within reach' where a quiet one did not)."""
    measured = f"batch {batch}, {threads} threads, {cpu_model()}; {noise.conditions()}"
    if not noise.trustworthy:
        return (f"  ceiling with today's non-convolution layers: {best:.2f}x - NO VERDICT: these timings are not "
                f"trustworthy ({'; '.join(noise.reasons)}); rerun on a quiet machine ({measured})")
    conclusion = "within reach" if best >= goal else "the goal is out of reach on this CPU"
    return (f"  ceiling with today's non-convolution layers: {best:.2f}x; {conclusion} - for {measured}, "
            "with today's OpenVINO int8 kernels")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--goal", type=float, default=6.0, help="speed-up over the original computation")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    vnni = cpu_has_vnni()
    print(f"CPU: {cpu_model()} (VNNI/AMX: {vnni}); {args.threads} threads; load average {os.getloadavg()[0]:.1f}")

    monitor = NoiseMonitor(args.threads).__enter__()     # every timing below is judged by its conditions
    peak = gemm_throughput(args.threads, args.iters)
    print(f"GEMM {GEMM}^3: fp32 {peak['fp32']:.1f} GMAC/s, int8 u8xs8 {peak['int8']:.1f} GMAC/s "
          f"({peak['int8'] / peak['fp32']:.2f}x fp32)")

    model = tinyvim.create_model("s")
    macs = macs_by_kind(tinyvim.reparameterize(model))
    gemm_macs = sum(macs.values()) * args.batch     # every conv and linear MAC, int8-able
    print("TinyViM-S MACs per image: " + ", ".join(f"{k} {v / 1e9:.3f} G" for k, v in macs.items()))

    with tempfile.TemporaryDirectory(prefix="tinyvim-ceiling-") as tmp:
        tmp = Path(tmp)
        fp32 = export_onnx(tmp / "s.onnx", ModelSpec("s"), InputSpec(batch=None), network=model).path
        int8 = quantize_onnx(fp32, tmp / "s.int8.onnx", CalibrationRequest(calib_random=16), dtype="int8",
                             reduce_range=not vnni, threads=args.threads).path
        x = next(iter_random_batches(1, args.batch, (224, 224), seed=7))
        runners = {"torch": TorchRunner(model, scan="sequential", threads=args.threads),
                   "ov int8": OvRunner(int8, precision="f32", threads=args.threads, name="ov int8")}
        for r in runners.values():
            r.activate()
        try:
            times = interleaved({k: (lambda r=r: r.infer({"images": x})) for k, r in runners.items()},
                                args.iters, 2)
        finally:
            for r in runners.values():
                r.deactivate()
        med = {k: statistics.median(t) for k, t in times.items()}
        split = ov_layer_split(int8, x, args.threads)
    monitor.__exit__(None, None, None)
    noise = monitor.report({k: relative_spread(t) for k, t in times.items()})

    allowed = med["torch"] / args.goal
    floor = gemm_macs / peak["int8"] / 1e6          # ms
    conv_rate = gemm_macs / (split["conv"] / 1e3) / 1e9
    print(f"\nbatch {args.batch}, medians of {args.iters} interleaved calls:")
    print(f"  torch (the original computation) {med['torch']:.1f} ms; ov int8 {med['ov int8']:.1f} ms "
          f"({med['torch'] / med['ov int8']:.2f}x)")
    print(f"  ov int8 by OpenVINO's profile: convolutions {split['conv']:.1f} ms ({conv_rate:.1f} GMAC/s, "
          f"{conv_rate / peak['int8']:.0%} of the large-GEMM int8 rate), everything else {split['rest']:.1f} ms")
    print(f"  the goal ({args.goal:g}x) allows {allowed:.1f} ms; the convolutions alone at the large-GEMM int8 "
          f"rate take {floor:.1f} ms, leaving {allowed - floor:.1f} ms for the rest (today {split['rest']:.1f} ms)")
    best = med["torch"] / (floor + split["rest"])
    print(ceiling_verdict(best, args.goal, noise, batch=args.batch, threads=args.threads))
    if args.json:
        atomic_write_json(args.json, {"cpu": cpu_model(), "vnni": vnni, "threads": args.threads,
                                      "batch": args.batch, "gemm_gmacs": peak, "macs_per_image": macs,
                                      "ms": med, "ov_int8_split_ms": split, "allowed_ms": allowed,
                                      "conv_floor_ms": floor, "ceiling_x": best,
                                      "load_average": os.getloadavg(), "noise": noise.to_dict()})


if __name__ == "__main__":
    main()
