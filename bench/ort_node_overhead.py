"""Where ONNX Runtime's plugin node spends its time beyond the fast kernel, piece by piece.

For each of the five SS2D scans of TinyViM-S (shapes read from the model at --size) and each batch,
timed interleaved (median µs per call):
  kernel      the compiled scan alone: one ctypes call writing into a preallocated output
  wrapper     tinyvim.plugins.cpu_fast.cross_selective_scan_fast: dtype/contiguity/shape checks,
              output allocation, the call
  invoke      our invoker as onnxruntime-extensions' C++ kernel calls it (attribute casts, the
              contract's shape check, the wrapper, the flat result array)
  stock       the stock invoker of onnxruntime-extensions on the same call: the same op, its result
              turned into a Python list (`y.flatten().tolist()`)
  list->arr   what its C++ side then does with that list before the memcpy into ORT's output:
              pybind11 casts it to an array (float64, then float32 for the declared type)
  in-copies   what its C++ side does with the 7 inputs before calling Python: a new array and a
              memcpy each (imitated with np.empty_like + np.copyto)
  run-only    session.run's own cost on the same feeds and output size: an ONNX Runtime session
              whose graph is y = Identity(x) (inside a model, the node's inputs come from the nodes
              before it and this cost is not paid per node)
  node        the whole plugin node in an ONNX Runtime session (fast route), our invoker
  node-stock  the same session with the stock invoker put back (use_array_results(False))
Then per scan: node - kernel - run-only (the route's overhead inside a model) for both invokers,
and the totals of the five scans per inference.

Whole model (--model, on by default): TinyViM-S exported with --scan plugin and --scan portable
(--size, dynamic batch), timed interleaved against the original computation (PyTorch, unfused,
sequential scan: validate's reference): torch, ort fp32 plugin (our invoker), ort fp32 plugin with
the stock invoker, ort fp32 portable; median ms and speed-up over torch per batch (the issue's goal:
ort fp32 plugin at batch 1 >= 3.5x). The invokers are called with the very arguments the C++ kernel passes
(captured from one session run).

    python bench/ort_node_overhead.py [--size 224] [--batches 1,8] [--iters 50] [--warmup 5]
                                      [--threads 2] [--no-model] [--model-iters 20] [--json PATH]
"""
from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from _common import bench_parser, finish_report, interleaved
from fast_scan_cpu import ort_options, scan_shapes
import tinyvim
from tinyvim.backends.ort import custom_ops
from tinyvim.backends.ort.runner import OrtRunner
from tinyvim.backends.torch.runner import TorchRunner
from tinyvim.contract import InputSpec, ModelSpec
from tinyvim.export import export_onnx
from tinyvim.backends.ort.custom_ops import plugin_session, use_array_results
from tinyvim.export.scan_node import scan_node_model
from tinyvim.ops.reference import random_scan_inputs
from tinyvim.tools.inputs import iter_random_batches
from tinyvim.plugins import cpu_fast
from tinyvim.tools.profile import cpu_model

INPUTS = ("x", "delta", "Bs", "Cs", "A", "Ds", "delta_bias")
PIECES = ("kernel", "wrapper", "invoke", "stock", "list->arr", "in-copies", "run-only", "node", "node-stock")


def captured_call(session, feed: dict) -> tuple:
    """(op id, input arrays, attributes) exactly as the extension's C++ kernel hands them to the
    invoker, from one run of `session` (our invoker is put back afterwards)."""
    seen = []

    def capture(op_id, arrays, attributes):
        seen.append((op_id, [np.array(a) for a in arrays], dict(attributes)))
        return custom_ops._invoke(op_id, arrays, attributes)

    custom_ops.import_ort_extensions().PyCustomOpDef.install_hooker(capture)
    try:
        session.run(None, feed)
    finally:
        use_array_results(True)
    assert len(seen) == 1, "one plugin node, one call"
    return seen[0]


def identity_session(io: dict, threads: int):
    """An ONNX Runtime session taking the node's four feeds and returning y = Identity(x)."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "run_only",
        [onnx.helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, list(v.shape)) for k, v in io.items()],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, list(io["x"].shape))])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), ort_options(threads), providers=["CPUExecutionProvider"])


def whole_model(args, report: dict) -> None:
    """The plugin flavour against the original computation, both invokers, interleaved."""
    with tempfile.TemporaryDirectory(prefix="tinyvim-ortnode-") as tmp:
        model = tinyvim.create_model("s")
        files = {flavour: export_onnx(Path(tmp) / f"{flavour}.onnx", ModelSpec("s"),
                                      InputSpec((args.size, args.size), None), scan=flavour, network=model).path
                 for flavour in ("plugin", "portable")}
        runners = {"torch": TorchRunner(model, scan="sequential", threads=args.threads),
                   "ort fp32 plugin": OrtRunner(files["plugin"], threads=args.threads),
                   "ort fp32 portable": OrtRunner(files["portable"], threads=args.threads)}
        for r in runners.values():
            r.activate()

        def stock(feed):
            use_array_results(False)
            try:
                return runners["ort fp32 plugin"].infer(feed)
            finally:
                use_array_results(True)
        try:
            for b in (int(s) for s in args.batches.split(",")):
                feed = {"images": next(iter_random_batches(1, b, (args.size, args.size), seed=7 + b))}
                fns = {k: (lambda r=r: r.infer(feed)) for k, r in runners.items()}
                fns["ort fp32 plugin, stock invoker"] = lambda: stock(feed)
                times = interleaved(fns, args.model_iters if b == 1 else max(5, args.model_iters // 2), args.warmup)
                med = {k: statistics.median(t) for k, t in times.items()}
                report["model"].append({"batch": b, "ms": med})
                print(f"\nTinyViM-S {args.size}, batch {b}, median ms (speed-up over torch, the original computation)")
                print("  " + "  ".join(f"{k} {v:.2f} ({med['torch'] / v:.2f}x)" for k, v in med.items()))
        finally:
            for r in runners.values():
                r.deactivate()


def main():
    ap = bench_parser(__doc__)
    ap.set_defaults(iters=50, warmup=5)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--no-model", dest="model", action="store_false", help="leave out the whole-model timing")
    ap.add_argument("--model-iters", type=int, default=20, help="iterations of the whole-model timing at batch 1")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lib = cpu_fast.load_library()
    report = {"env": {"cpu": cpu_model(), "isa": cpu_fast.isa(), "threads": args.threads, "size": args.size,
                      "load_average": os.getloadavg()}, "rows": [], "model": []}
    print(f"CPU: {report['env']['cpu']} (fast kernel path: {report['env']['isa']}), {args.threads} threads, "
          f"load {os.getloadavg()[0]:.1f}; median µs per call")
    print(f"{'batch':>5} {'scan (D,h,w,N)':<18} " + " ".join(f"{p:>10}" for p in PIECES)
          + f" {'overhead':>9} {'stock ovh':>9}")
    for batch in (int(b) for b in args.batches.split(",")):
        totals = dict.fromkeys(PIECES, 0.0)
        for i, (d, h, w, n) in enumerate(scan_shapes("s", args.size)):
            inp = {k: v.astype(np.float32) for k, v in random_scan_inputs(batch, d, h, w, n, seed=i).items()}
            io = {k: inp[k] for k in ("x", "delta", "Bs", "Cs")}
            params = {k: inp[k] for k in ("A", "Ds", "delta_bias")}
            session = plugin_session(scan_node_model(d, n, batch=batch, size=(h, w), params=params),
                                     sess_options=ort_options(args.threads), route="fast")
            op_id, arrays, attributes = captured_call(session, io)
            y = np.empty_like(inp["x"])
            ptrs = [inp[k].ctypes.data for k in INPUTS] + [y.ctypes.data]
            dims = (batch, d, h, w, n)

            def node_stock():
                use_array_results(False)
                try:
                    return session.run(None, io)
                finally:
                    use_array_results(True)

            stock_list = custom_ops._stock_invoker(op_id, arrays, attributes)[2]
            run_only = identity_session(io, args.threads)
            fns = {"kernel": lambda: lib.tinyvim_cross_scan_fast(*ptrs, *dims, 0, args.threads),
                   "wrapper": lambda: cpu_fast.cross_selective_scan_fast(*arrays, threads=args.threads),
                   "invoke": lambda: custom_ops._invoke(op_id, arrays, attributes),
                   "stock": lambda: custom_ops._stock_invoker(op_id, arrays, attributes),
                   "list->arr": lambda: np.asarray(np.asarray(stock_list), np.float32),
                   "in-copies": lambda: [np.copyto(np.empty_like(a), a) for a in arrays],
                   "run-only": lambda: run_only.run(None, io),
                   "node": lambda: session.run(None, io),
                   "node-stock": node_stock}
            med = {k: statistics.median(v) * 1e3 for k, v in interleaved(fns, args.iters, args.warmup).items()}
            # both invokers give the node the kernel's own result (a check that the right thing is timed)
            want = cpu_fast.cross_selective_scan_fast(**inp, threads=args.threads)
            assert np.array_equal(session.run(None, io)[0], want)
            assert np.array_equal(node_stock()[0], want)
            report["rows"].append({"batch": batch, "scan": [d, h, w, n], "us": med})
            for k in med:
                totals[k] += med[k]
            print(f"{batch:>5} {str((d, h, w, n)):<18} " + " ".join(f"{med[p]:10.0f}" for p in PIECES)
                  + f" {med['node'] - med['kernel'] - med['run-only']:9.0f} "
                  f"{med['node-stock'] - med['kernel'] - med['run-only']:9.0f}")
        print(f"{batch:>5} {'all five scans':<18} " + " ".join(f"{totals[p]:10.0f}" for p in PIECES)
              + f" {totals['node'] - totals['kernel'] - totals['run-only']:9.0f} "
              f"{totals['node-stock'] - totals['kernel'] - totals['run-only']:9.0f}")
    if args.model:
        whole_model(args, report)
    finish_report(report, args.json)


if __name__ == "__main__":
    main()
