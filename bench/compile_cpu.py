"""torch.compile (Inductor, CPU) of the re-parameterized model against eager: compile time, max |Δ|
of the logits (the acceptance bar is 1e-5) and latency, interleaved, for each variant at 224x224.
The scan runs as the `tinyvim::cross_selective_scan` op (opaque to Inductor, its fake kernel
giving the output strides); everything around it is compiled.

    python bench/compile_cpu.py [--variants s,b,l] [--batches 1] [--iters 20] [--threads 2] [--json F]
"""
from __future__ import annotations

import os
import statistics
import time

import numpy as np
import torch

import tinyvim
from _common import bench_parser, finish_report, interleaved

ACCEPT = 1e-5


def main() -> None:
    ap = bench_parser(__doc__)
    ap.set_defaults(batches="1")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    report = {"env": {"torch": torch.__version__, "threads": args.threads, "cpus": os.cpu_count(),
                      "load_average_start": os.getloadavg()}, "rows": []}
    print(f"{'variant':8}{'batch':>6}{'compile s':>11}{'max|Δ|':>10}{'eager ms':>10}{'compiled ms':>13}")
    for v in args.variants.split(","):
        model = tinyvim.reparameterize(tinyvim.create_model(v)).eval()
        torch._dynamo.reset()
        compiled = torch.compile(model)
        for b in (int(s) for s in args.batches.split(",")):
            x = torch.from_numpy(np.random.default_rng(b).standard_normal((b, 3, 224, 224)).astype(np.float32))
            with torch.inference_mode():
                eager = model(x)
                start = time.perf_counter()
                out = compiled(x)
                compile_s = time.perf_counter() - start
                err = float((out - eager).abs().max())
                times = interleaved({"eager": lambda: model(x), "compiled": lambda: compiled(x)},
                                    args.iters, args.warmup)
            med = {k: statistics.median(t) for k, t in times.items()}
            report["rows"].append({"variant": v, "batch": b, "compile_s": compile_s, "max_abs_err": err,
                                   "ms": med, "passed": err <= ACCEPT})
            print(f"{v.upper():8}{b:>6}{compile_s:>11.1f}{err:>10.1e}{med['eager']:>10.1f}{med['compiled']:>13.1f}"
                  + ("" if err <= ACCEPT else f"  FAIL (> {ACCEPT:g})"), flush=True)
    finish_report(report, args.json)


if __name__ == "__main__":
    main()
