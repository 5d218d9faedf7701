"""One-shot GPU check of the scan kernel, for a lent GPU machine (scripts/gpu_check.sh).

Sections, each isolated (an exception is recorded in the report and the next one runs),
and the JSON report rewritten atomically after each, so that a timeout keeps what ran:
  env            torch/CUDA/device facts and the card's peak memory bandwidth
  build          CMake build of libtinyvim_scan_cuda.so for this GPU's architecture
  accuracy       kernel vs the float64 reference (fp32 <= 1e-5, fp16/bf16 I/O <= 1e-2 of
                 max|y|), vs the CPU twin (same arithmetic), determinism (bitwise rerun)
  model          TinyViM S/B/L logits with the "cuda" scan vs the pure-PyTorch "parallel"
  kernel_bench   kernel vs "parallel" for every SS2D shape of S/B/L at batch 1/64/256
                 (CUDA events), achieved bandwidth as a fraction of the card's peak
  throughput     whole-model images/s, fp16 autocast, batch 256, "cuda" vs "parallel"

--dry-run runs the same code paths on the CPU with the CPU twin standing in for the
kernel and tiny sizes, so the script is exercised where there is no GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from tinyvim.contract import DEFAULT_IMG_SIZE
from tinyvim.model import create_model
from tinyvim.ops import scan_implementation, scan_parallel
from tinyvim.ops.reference import cross_selective_scan_reference, random_scan_inputs
from tinyvim.plugins import cpu_twin, torch_cuda  # noqa: F401  (torch_cuda registers the "cuda" scan)
from tinyvim.plugins.build import build
from tinyvim.plugins.cpu_twin import cross_selective_scan_cpu
from tinyvim.utils import atomic_write_text

# d_inner per stage of each variant (SPEC: int(dim * alpha), alpha = 1/4, 1/2, 1/2, 3/4);
# every scan runs on a 7x7 grid at 224, N = 8.
D_INNER = {"s": (12, 32, 84, 168), "b": (12, 48, 96, 288), "l": (16, 64, 192, 384)}
# Peak DRAM bandwidth (bytes/s) by device-name substring, most specific first.
PEAK_BW = [("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100 NVL", 3.9e12), ("H100", 3.35e12),
           ("GH200", 4.0e12), ("B200", 8.0e12), ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12),
           ("A100", 1.555e12), ("L40S", 0.864e12), ("L40", 0.864e12), ("L4", 0.3e12),
           ("A10G", 0.6e12), ("A10", 0.6e12), ("RTX 4090", 1.008e12), ("RTX 3090", 0.936e12), ("T4", 0.32e12)]
ACCURACY_SHAPES = [(1, 5, 3, 4, 8), (3, 13, 7, 5, 16), (2, 96, 7, 7, 8), (1, 12, 8, 8, 8),
                   (2, 7, 5, 9, 4), (1, 3, 20, 21, 8)]   # the last one takes the workspace path
TOL = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 1e-2}


class Report:
    def __init__(self, path: Path | None):
        self.path = path
        self.data: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "sections": {}}

    def write(self) -> None:
        if not self.path:
            return
        atomic_write_text(self.path, json.dumps(self.data, indent=2, default=str))

    def section(self, name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            result = fn(*args, **kwargs)
            entry = {"ok": True, **(result or {})}
        except Exception as exc:   # every section must report, whatever fails
            entry = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                     "traceback": traceback.format_exc(limit=6)}
            print(f"   FAILED: {entry['error']}", flush=True)
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        self.data["sections"][name] = entry
        self.write()
        return entry


def _rel(y, ref) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.abs(np.asarray(y, np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def _inputs(b, d, h, w, n, device, seed=0):
    return {k: torch.from_numpy(v.astype(np.float32)).to(device)
            for k, v in random_scan_inputs(b, d, h, w, n, seed=seed).items()}


class Ctx:
    def __init__(self, dry_run: bool):
        self.dry_run = dry_run
        self.device = "cpu" if dry_run else "cuda"
        self.scan_name = "cpu_twin" if dry_run else "cuda"
        self.scan_fn = None
        self.peak_bw = None

    def sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def timer(self, fn, iters: int, warmup: int = 2) -> float:
        """Mean milliseconds per call (CUDA events on the GPU, perf_counter on the CPU)."""
        for _ in range(warmup):
            fn()
        self.sync()
        if self.device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / iters
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) * 1e3 / iters


# ----------------------------------------------------------------------------- sections
def sec_env(ctx: Ctx) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "dry_run": ctx.dry_run}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2**30, 1))
        ctx.peak_bw = next((bw for key, bw in PEAK_BW if key in p.name), None)
        info["peak_bandwidth_tb_s"] = ctx.peak_bw / 1e12 if ctx.peak_bw else None
    elif not ctx.dry_run:
        raise RuntimeError("torch.cuda.is_available() is False: run with --dry-run on a machine without a GPU")
    return info


def sec_build(ctx: Ctx, build_dir: Path) -> dict:
    if ctx.dry_run:
        # No nvcc needed: the twin stands in for the kernel.
        cpu_twin.register()
        ctx.scan_fn = cpu_twin.scan_cpu_twin_torch
        return {"library": str(cpu_twin.load_library()._name), "note": "dry run: CPU twin as the kernel"}
    major, minor = torch.cuda.get_device_capability(0)
    arch = f"{major}{minor}"
    t0 = time.perf_counter()
    result = build(build_dir, cuda_arch=arch, jobs=os.cpu_count() or 4)
    lib = result.built["tinyvim_scan_cuda"]
    os.environ["TINYVIM_SCAN_CUDA_LIB"] = str(lib)
    torch_cuda.load_cuda_library.cache_clear()
    ok, why = torch_cuda.cuda_scan_available()
    if not ok:
        raise RuntimeError(why)
    ctx.scan_fn = torch_cuda.scan_cuda
    cpu_twin.register()
    return {"library": str(lib), "arch": arch, "build_seconds": round(time.perf_counter() - t0, 1),
            "skipped": result.skipped}


def sec_accuracy(ctx: Ctx) -> dict:
    rows, worst = [], {}
    dtypes = [torch.float32] if ctx.dry_run else [torch.float32, torch.float16, torch.bfloat16]
    for shape in ACCURACY_SHAPES:
        inp = _inputs(*shape, device=ctx.device, seed=sum(shape))
        for dt in dtypes:
            io = {k: (v.to(dt) if k in ("x", "delta", "Bs", "Cs") else v) for k, v in inp.items()}
            # Reference on the values the kernel actually sees (after the I/O rounding).
            ref = cross_selective_scan_reference(**{k: v.double().cpu().numpy() for k, v in io.items()})
            y = ctx.scan_fn(*io.values())
            y2 = ctx.scan_fn(*io.values())
            name = str(dt).replace("torch.", "")
            row = {"shape": list(shape), "dtype": name, "rel_err": _rel(y.double().cpu().numpy(), ref),
                   "deterministic": bool(torch.equal(y, y2)), "dtype_ok": y.dtype == dt}
            if dt == torch.float32:
                twin = cross_selective_scan_cpu(**{k: v.cpu().numpy() for k, v in io.items()})
                row["vs_twin_max_abs"] = float(np.abs(y.cpu().numpy() - twin).max())
            row["pass"] = row["rel_err"] <= TOL[name] and row["deterministic"] and row["dtype_ok"]
            rows.append(row)
            worst[name] = max(worst.get(name, 0.0), row["rel_err"])
            print(f"   {shape} {name:9s} rel_err {row['rel_err']:.2e} "
                  f"{'det' if row['deterministic'] else 'NONDET'} {'ok' if row['pass'] else 'FAIL'}", flush=True)
    failed = [r for r in rows if not r["pass"]]
    return {"all_pass": not failed, "worst_rel_err": worst, "tolerance": TOL, "cases": rows}


def sec_model(ctx: Ctx, variants, batch: int) -> dict:
    out = {}
    for v in variants:
        model = create_model(variant=v).to(ctx.device)
        x = torch.randn(batch, 3, *DEFAULT_IMG_SIZE, device=ctx.device, generator=torch.Generator(ctx.device).manual_seed(0))
        with torch.no_grad():
            with scan_implementation("parallel"):
                ref = model(x)
            with scan_implementation(ctx.scan_name):
                got = model(x)
        delta = (got.float() - ref.float()).abs().max().item()
        out[v] = {"batch": batch, "max_abs_diff_logits": delta,
                  "max_abs_logits": ref.abs().max().item(), "pass": delta <= 1e-3}
        print(f"   {v}: max|dlogits| {delta:.3e}", flush=True)
        del model
    return {"variants": out, "all_pass": all(r["pass"] for r in out.values())}


def _bytes_moved(b, d, L, n, elem) -> int:
    # x, delta (4D), Bs, Cs (4N each) read, y written; A/Ds/delta_bias negligible.
    return elem * b * L * (d + 4 * d + 8 * n + d)


def sec_kernel_bench(ctx: Ctx, batches, deadline: float) -> dict:
    dims = sorted({d for ds in D_INNER.values() for d in ds})
    rows = []
    for b in batches:
        for d in dims:
            if time.perf_counter() > deadline:
                rows.append({"skipped": f"time budget reached before batch {b}, D {d}"})
                return {"rows": rows, "truncated": True}
            inp = _inputs(b, d, 7, 7, 8, ctx.device)
            args = list(inp.values())
            iters = 1 if ctx.dry_run else 20
            t_k = ctx.timer(lambda: ctx.scan_fn(*args), iters, warmup=1 if ctx.dry_run else 3)
            t_p = ctx.timer(lambda: scan_parallel(*args), 1 if ctx.dry_run else 5, warmup=1)
            moved = _bytes_moved(b, d, 49, 8, 4)
            bw = moved / (t_k * 1e-3)
            row = {"batch": b, "d_inner": d, "used_by": [v for v, ds in D_INNER.items() if d in ds],
                   "kernel_ms": round(t_k, 4), "parallel_ms": round(t_p, 4), "speedup": round(t_p / t_k, 1),
                   "kernel_gb_s": round(bw / 1e9, 1),
                   "fraction_of_peak": round(bw / ctx.peak_bw, 3) if ctx.peak_bw else None}
            rows.append(row)
            print(f"   B{b:<4d} D{d:<4d} kernel {t_k:8.4f} ms  parallel {t_p:8.3f} ms  x{row['speedup']:<6} "
                  f"{row['kernel_gb_s']:7.1f} GB/s {row['fraction_of_peak'] or ''}", flush=True)
            del inp, args
    return {"rows": rows, "bytes_model": "x + delta(4D) + Bs,Cs(4N each) + y, fp32, L=49, N=8"}


def sec_throughput(ctx: Ctx, variants, batch: int, iters: int, deadline: float) -> dict:
    out = {}
    # fp16 autocast on the GPU; the dry run stays float32 (CPU bf16 autocast is very slow
    # and only the code path matters there).
    amp = torch.float16 if ctx.device == "cuda" else None
    for v in variants:
        if time.perf_counter() > deadline:
            out[v] = {"skipped": "time budget reached"}
            continue
        model = create_model(variant=v).to(ctx.device)
        x = torch.randn(batch, 3, *DEFAULT_IMG_SIZE, device=ctx.device)
        res = {}
        for impl in ("parallel", ctx.scan_name):
            def run():
                autocast = torch.autocast(ctx.device, dtype=amp) if amp else contextlib.nullcontext()
                with torch.no_grad(), autocast, scan_implementation(impl):
                    model(x)
            ms = ctx.timer(run, iters, warmup=0 if ctx.dry_run else 2)
            res[impl] = {"ms_per_batch": round(ms, 2), "images_per_s": round(batch / (ms * 1e-3), 1)}
        res["speedup"] = round(res["parallel"]["ms_per_batch"] / res[ctx.scan_name]["ms_per_batch"], 2)
        out[v] = res
        print(f"   {v}: parallel {res['parallel']['images_per_s']} img/s, "
              f"{ctx.scan_name} {res[ctx.scan_name]['images_per_s']} img/s", flush=True)
        del model, x
        if ctx.device == "cuda":
            torch.cuda.empty_cache()
    return {"batch": batch, "autocast": str(amp), "variants": out}


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None, help="write the report here (atomically)")
    ap.add_argument("--dry-run", action="store_true", help="CPU only: the CPU twin stands in for the kernel")
    ap.add_argument("--build-dir", type=Path, default=Path(tempfile.gettempdir()) / "tinyvim_gpu_check_build")
    ap.add_argument("--budget-s", type=float, default=200.0, help="stop benchmarking after this many seconds")
    ap.add_argument("--variants", default="s,b,l")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    deadline = t_start + args.budget_s
    variants = [v for v in args.variants.split(",") if v]
    ctx = Ctx(args.dry_run)
    rep = Report(args.json)
    rep.section("env", sec_env, ctx)
    build = rep.section("build", sec_build, ctx, args.build_dir)
    if build["ok"]:
        rep.section("accuracy", sec_accuracy, ctx)
        rep.section("model", sec_model, ctx, variants, 1 if ctx.dry_run else 8)
        rep.section("kernel_bench", sec_kernel_bench, ctx, (1, 2) if ctx.dry_run else (1, 64, 256),
                    min(deadline, t_start + args.budget_s * 0.6))
        rep.section("throughput", sec_throughput, ctx, variants, 1 if ctx.dry_run else 256,
                    1 if ctx.dry_run else 5, deadline)
    secs = rep.data["sections"]
    rep.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    rep.data["total_seconds"] = round(time.perf_counter() - t_start, 1)
    rep.data["summary"] = {name: ("ok" if s["ok"] else s["error"]) for name, s in secs.items()}
    ok = all(s["ok"] for s in secs.values()) and secs.get("accuracy", {}).get("all_pass", False)
    rep.data["pass"] = ok
    rep.write()
    print("== summary")
    for name, s in secs.items():
        print(f"   {name:13s} {'ok' if s['ok'] else 'FAILED: ' + s['error']}  ({s['seconds']} s)")
    if "accuracy" in secs and secs["accuracy"]["ok"]:
        print(f"   worst rel err: {secs['accuracy']['worst_rel_err']}  all pass: {secs['accuracy']['all_pass']}")
    print(f"   overall: {'PASS' if ok else 'FAIL'} in {rep.data['total_seconds']} s"
          + (f"; report {args.json}" if args.json else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
