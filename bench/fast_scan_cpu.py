"""The fast CPU scan against the CPU twin and the portable lowering, on TinyViM-S's own scans.

For each of the five SS2D scans of a variant (shapes read from the model at --size) and each
batch, timed interleaved (median ms):
  fast      our fast kernel (tinyvim.plugins.cpu_fast) on --threads threads, called directly
  twin      the CPU twin (the CUDA kernel's arithmetic, scalar, one thread): the reference
  lowered   the same node replaced by the portable ONNX lowering (what --scan portable
            exports), one ONNX Runtime session on --threads threads
  ort-node  the plugin node in an ONNX Runtime session, the fast route behind the Python
            custom op (onnxruntime-extensions): `ort-node - fast` is the per-call overhead
Prints the speed-ups fast/twin and lowered/fast, and the overhead of the custom-op route per
call and per inference (five calls). --skip-twin leaves out the slow twin at large batches.

    python bench/fast_scan_cpu.py [--variants s] [--size 224] [--batches 1,8] [--iters 20]
                                  [--warmup 3] [--threads 2] [--skip-twin] [--json PATH]
"""
from __future__ import annotations

import os
import statistics

import numpy as np
import onnxruntime as ort
import torch

from _common import bench_parser, finish_report, interleaved
from tinyvim.backends.ort.custom_ops import plugin_session
from tinyvim.export.scan_lowering import expand_scan_nodes
from tinyvim.export.scan_node import scan_node_model
from tinyvim.model import create_model
from tinyvim.ops import register_scan_implementation, scan_implementation, scan_parallel
from tinyvim.ops.reference import random_scan_inputs
from tinyvim.plugins.cpu_fast import cross_selective_scan_fast, isa
from tinyvim.plugins.cpu_twin import cross_selective_scan_cpu
from tinyvim.tools.profile import cpu_model


def scan_shapes(variant: str, size: int) -> list[tuple[int, int, int, int]]:
    """(D, h, w, N) of every scan the model runs on one image, in call order."""
    shapes = []

    def record(x, delta, Bs, Cs, A, Ds, delta_bias):
        shapes.append((x.shape[1], x.shape[2], x.shape[3], A.shape[1]))
        return scan_parallel(x, delta, Bs, Cs, A, Ds, delta_bias)

    register_scan_implementation("bench_record", record)
    model = create_model(variant).eval()
    with torch.no_grad(), scan_implementation("bench_record", inline=True):
        model(torch.zeros(1, 3, size, size))
    return shapes


def ort_options(threads: int):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def main():
    ap = bench_parser(__doc__)
    ap.set_defaults(variants="s")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--skip-twin", action="store_true", help="leave out the scalar twin")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    report = {"env": {"cpu": cpu_model(), "isa": isa(), "threads": args.threads, "size": args.size,
                      "load_average": os.getloadavg()}, "rows": []}
    print(f"CPU: {report['env']['cpu']} (fast kernel path: {report['env']['isa']}), {args.threads} threads, "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"{'variant':<4} {'batch':>5} {'scan (D,h,w,N)':<18} {'fast':>8} {'twin':>8} {'lowered':>8} {'ort-node':>9} "
          f"{'twin/fast':>9} {'lowered/fast':>12} {'overhead':>9}")
    for variant in args.variants.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            totals = {"fast": 0.0, "twin": 0.0, "lowered": 0.0, "ort-node": 0.0}
            for i, (d, h, w, n) in enumerate(scan_shapes(variant, args.size)):
                inp = {k: v.astype(np.float32) for k, v in random_scan_inputs(batch, d, h, w, n, seed=i).items()}
                io = {k: inp[k] for k in ("x", "delta", "Bs", "Cs")}
                params = {k: inp[k] for k in ("A", "Ds", "delta_bias")}
                lowered = scan_node_model(d, n, batch=batch, size=(h, w), params=params)
                expand_scan_nodes(lowered)
                lowered_sess = ort.InferenceSession(lowered.SerializeToString(), ort_options(args.threads),
                                                    providers=["CPUExecutionProvider"])
                node_sess = plugin_session(scan_node_model(d, n, batch=batch, size=(h, w), params=params),
                                           sess_options=ort_options(args.threads), route="fast")
                fns = {"fast": lambda: cross_selective_scan_fast(**inp, threads=args.threads),
                       "lowered": lambda: lowered_sess.run(None, io),
                       "ort-node": lambda: node_sess.run(None, io)}
                if not args.skip_twin:
                    fns["twin"] = lambda: cross_selective_scan_cpu(**inp)
                med = {k: statistics.median(v) for k, v in interleaved(fns, args.iters, args.warmup).items()}
                # the node computes what the kernel computes (same code): a check that the bench times the right thing
                assert np.array_equal(node_sess.run(None, io)[0], cross_selective_scan_fast(**inp, threads=args.threads))
                row = {"variant": variant, "batch": batch, "scan": [d, h, w, n], **med}
                report["rows"].append(row)
                for k in med:
                    totals[k] += med[k]
                twin = f"{med['twin']:8.2f}" if "twin" in med else f"{'-':>8}"
                ratio = f"{med['twin'] / med['fast']:9.1f}" if "twin" in med else f"{'-':>9}"
                print(f"{variant:<4} {batch:>5} {str((d, h, w, n)):<18} {med['fast']:8.2f} {twin} {med['lowered']:8.2f} "
                      f"{med['ort-node']:9.2f} {ratio} {med['lowered'] / med['fast']:12.1f} "
                      f"{(med['ort-node'] - med['fast']) * 1e3:7.0f}us")
            twin = f"{totals['twin']:8.2f}" if not args.skip_twin else f"{'-':>8}"
            print(f"{variant:<4} {batch:>5} {'all scans':<18} {totals['fast']:8.2f} {twin} {totals['lowered']:8.2f} "
                  f"{totals['ort-node']:9.2f} {'':>9} {totals['lowered'] / totals['fast']:12.1f} "
                  f"{(totals['ort-node'] - totals['fast']) * 1e3:7.0f}us per inference")
    finish_report(report, args.json)


if __name__ == "__main__":
    main()
