"""Latency / throughput measurement of runners, the environment it ran in, and reporting.

Backends are timed one after another (only one runner active at a time, ORT spinning off), so
each is measured with the others idle. Latency is per `infer` call as the runner measures it
(`BaseRunner.last_inference_time`: the model call for CPU backends, CUDA-event compute time for
TensorRT, whose copies are reported separately as h2d/d2h).
"""
from __future__ import annotations

import os
import platform
import time
from typing import Callable

import numpy as np

from tinyvim.engines.base import BaseRunner
from tinyvim.errors import TinyvimError


def latency_stats(seconds) -> dict:
    """Statistics in milliseconds of per-call times in seconds: mean, p50, p90, p99 (linear
    interpolation between order statistics), std (population, ddof=0), min, max, iters."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("no timings")
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"mean": float(ms.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "std": float(ms.std()), "min": float(ms.min()), "max": float(ms.max()), "iters": int(ms.size)}


def throughput(batch: int, mean_ms: float) -> float:
    """Images per second at the mean latency."""
    return batch * 1e3 / mean_ms if mean_ms > 0 else float("inf")


def default_threads() -> int:
    """All cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    for dist in {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "tensorrt": ("tensorrt", "tensorrt-cu12",
                                                                                "tensorrt-cu13")}.get(module, (module,)):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def environment(threads: int) -> dict:
    import torch

    import tinyvim
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": default_threads(), "threads": threads,
            "python": platform.python_version(), "platform": platform.platform(),
            "tinyvim": tinyvim.__version__, "torch": torch.__version__, "onnx": _version("onnx"),
            "onnxruntime": _version("onnxruntime"), "tensorrt": _version("tensorrt"),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def time_runner(runner: BaseRunner, feed: dict, *, warmup: int = 5, iters: int | None = 50,
                duration: float | None = None, on_iter: Callable[[], None] | None = None) -> tuple[np.ndarray, dict]:
    """Time an active runner on one feed: `warmup` untimed calls, then `iters` calls or as many
    as fit in `duration` seconds (at least 3). Returns (per-call seconds, mean seconds per
    extra phase such as h2d/d2h)."""
    if iters is None and duration is None:
        raise ValueError("give iters or duration")
    for _ in range(warmup):
        runner.infer(feed)
    times, phases = [], {}
    deadline = time.perf_counter() + duration if duration is not None else None
    while True:
        runner.infer(feed)
        times.append(runner.last_inference_time())
        for k, v in runner.last_timings().items():
            if k not in ("total", "compute"):
                phases.setdefault(k, []).append(v)
        if on_iter:
            on_iter()
        n = len(times)
        if deadline is not None:
            if time.perf_counter() >= deadline and n >= 3:
                break
        elif n >= iters:
            break
    return np.asarray(times), {k: float(np.mean(v)) for k, v in phases.items()}


def profile_backends(factories: dict[str, Callable[[], BaseRunner]], batches: list[int], img_size: tuple[int, int],
                     *, warmup: int = 5, iters: int | None = 50, duration: float | None = None, seed: int = 0,
                     log: Callable[[str], None] = lambda s: None,
                     batch_ok: Callable[[str, int], str | None] = lambda name, b: None) -> list[dict]:
    """Time every backend at every batch size. `factories` maps a backend name to a callable
    making its runner; `batch_ok(name, batch)` returns a reason to skip a combination.
    Returns one entry per (backend, batch): {backend, batch, latency_ms{...}, throughput, phases_ms}
    or {backend, batch, skipped: reason}."""
    rng = np.random.default_rng(seed)
    entries = []
    total = len(factories) * len(batches)
    done = 0
    for name, make in factories.items():
        runner = make()
        with runner:  # one runner active at a time: the others are idle while it is timed
            for b in batches:
                done += 1
                reason = batch_ok(name, b)
                if reason:
                    log(f"[{done}/{total}] {name} batch {b}: skipped ({reason})")
                    entries.append({"backend": name, "batch": b, "skipped": reason})
                    continue
                feed = {runner.input_names[0]: rng.standard_normal((b, 3, *img_size), dtype=np.float32)}
                log(f"[{done}/{total}] {name} batch {b}: timing...")
                times, phases = time_runner(runner, feed, warmup=warmup, iters=iters, duration=duration)
                stats = latency_stats(times)
                entries.append({"backend": name, "batch": b, "latency_ms": stats,
                                "throughput": throughput(b, stats["mean"]),
                                "phases_ms": {k: v * 1e3 for k, v in phases.items()}})
                log(f"[{done}/{total}] {name} batch {b}: {stats['mean']:.2f} ms mean, "
                    f"{entries[-1]['throughput']:.1f} img/s")
    return entries


def format_table(entries: list[dict]) -> str:
    header = f"{'backend':<12} {'batch':>5} {'mean':>9} {'p50':>9} {'p90':>9} {'p99':>9} {'std':>8} {'img/s':>9}"
    lines = [header + "   (latency in ms)", "-" * len(header)]
    for e in entries:
        if "skipped" in e:
            lines.append(f"{e['backend']:<12} {e['batch']:>5}  skipped: {e['skipped']}")
            continue
        s = e["latency_ms"]
        lines.append(f"{e['backend']:<12} {e['batch']:>5} {s['mean']:9.2f} {s['p50']:9.2f} {s['p90']:9.2f} "
                     f"{s['p99']:9.2f} {s['std']:8.2f} {e['throughput']:9.1f}")
    return "\n".join(lines)


def plot_latency(entries: list[dict], path: str, title: str = "") -> None:
    """Mean latency vs batch size, one line per backend, shaded up to p90; writes a PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise TinyvimError("--plot needs matplotlib: pip install 'tinyvim[plot]'") from exc
    fig, ax = plt.subplots(figsize=(6, 4))
    for backend in dict.fromkeys(e["backend"] for e in entries):
        pts = [(e["batch"], e["latency_ms"]["mean"], e["latency_ms"]["p90"])
               for e in entries if e["backend"] == backend and "latency_ms" in e]
        if not pts:
            continue
        xs, means, p90 = zip(*pts)
        ax.plot(xs, means, marker="o", label=backend)
        ax.fill_between(xs, means, p90, alpha=0.15)
    ax.set_xlabel("batch size")
    ax.set_ylabel("latency per call (ms, mean; band to p90)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
