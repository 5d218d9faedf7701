"""Eager PyTorch on the CPU: the original computation vs the deployment model.

    unfused + sequential scan  (what the official code computes)
    fused   + parallel scan    (tinyvim.reparameterize + the log-depth scan)

for S/B/L at batch 1 and 8 on 2 threads. The two configurations are timed interleaved
(one call of each in turn), so drift in machine load hits both alike. Prints median and
p90 latency per configuration and the ratio of medians.

    python bench/cpu_eager.py [--variants s,b,l] [--batches 1,8] [--iters 20] [--threads 2]
"""
from __future__ import annotations

import statistics

import torch

import tinyvim
from tinyvim.utils import atomic_write_json
from _common import bench_parser, interleaved


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def bench(variant: str, batch: int, iters: int, warmup: int) -> dict:
    model = tinyvim.create_model(variant)
    fused = tinyvim.reparameterize(model)
    x = torch.randn(batch, 3, 224, 224)

    def run(m, impl):
        def call():
            with torch.inference_mode(), tinyvim.scan_implementation(impl):
                m(x)
        return call
    times = interleaved({"unfused+sequential": run(model, "sequential"), "fused+parallel": run(fused, "parallel")},
                        iters, warmup)
    row = {"variant": variant, "batch": batch}
    for name, ts in times.items():
        row[name] = {"median_ms": statistics.median(ts), "p90_ms": percentile(ts, 90)}
    row["speedup"] = row["unfused+sequential"]["median_ms"] / row["fused+parallel"]["median_ms"]
    return row


def main():
    args = bench_parser(__doc__).parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"torch {torch.__version__}, {args.threads} threads, 224x224, fp32, {args.iters} interleaved iterations")
    print(f"{'variant':8}{'batch':>6}  {'unfused+seq median/p90 ms':>27}  {'fused+par median/p90 ms':>25}  {'speedup':>8}")
    for v in args.variants.split(","):
        for b in map(int, args.batches.split(",")):
            iters = args.iters if b == 1 else max(5, args.iters // 2)
            r = bench(v, b, iters, args.warmup)
            rows.append(r)
            u, f = r["unfused+sequential"], r["fused+parallel"]
            print(f"{v.upper():8}{b:>6}  {u['median_ms']:>13.1f} / {u['p90_ms']:>9.1f}  "
                  f"{f['median_ms']:>11.1f} / {f['p90_ms']:>9.1f}  {r['speedup']:>7.2f}x", flush=True)
    if args.json:
        atomic_write_json(args.json, rows)


if __name__ == "__main__":
    main()
