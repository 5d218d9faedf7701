"""Latency / throughput measurement of runners, the environment it ran in, and reporting.

Backends are timed in turn, one call of each per round (tinyvim.tools.timing), so a load that
comes and goes hits them alike and their ratios hold (ORT sessions are made not to spin between
calls, so an idle session leaves the cores to the backend whose turn it is). Latency is per `infer` call as the runner measures it
(`BaseRunner.last_inference_time`: the model call for CPU backends, CUDA-event compute time for
TensorRT, whose copies are reported separately as h2d/d2h).
"""
from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Sequence


from tinyvim.backends.base import BaseRunner
from tinyvim.backends.model_file import ModelInfo
from tinyvim.backends.registry import (
    Backend,
    RunnerRequest,
    parse_backends,
    read_model_info,
    unused_option_warnings,
)
from tinyvim.contract import (
    DEFAULT_IMG_SIZE,
    DEFAULT_VARIANT,
    FILE_KIND_NAMES,
    MAX_DURATION_S,
    InputSpec,
    ModelOverrides,
    ModelSpec,
    check_batch,
    check_count,
    check_positive_float,
    check_seed,
    check_threads,
    check_workload,
    format_size,
)
from tinyvim.errors import TinyvimError
from tinyvim.export import export_onnx
from tinyvim.interrupt import unwind_on_termination
from tinyvim.lazy import import_optional, lazy_import
from tinyvim.tools.environment import cpu_model, default_threads, environment  # noqa: F401  (re-exported)
from tinyvim.tools.noise import NoiseMonitor, relative_spread
from tinyvim.tools.reference import random_weights_note, resolve_checkpoint
from tinyvim.tools.timing import interleave
from tinyvim.utils import atomic_output, check_output_path, plural

np = lazy_import("numpy")

SCHEMA_VERSION = 1
#: formats `--plot` writes (matplotlib picks the format from the suffix)
PLOT_FORMATS = (".png", ".svg", ".pdf")


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


def _timed_call(runner: BaseRunner, feed: dict) -> Callable[[], dict]:
    """One infer of `runner` on `feed`, as a call for interleave: its sample is the runner's own
    timings of that call (total, and compute / h2d / d2h where the backend measures them)."""
    def call() -> dict:
        runner.infer(feed)
        return runner.last_timings()
    return call


def _entry(name: str, batch: int, timings: list[dict]) -> dict:
    """The result of one (backend, batch) from the timings of its timed calls: latency as the
    runner measures it (compute for TensorRT, whose copies are phases; the call otherwise)."""
    times = np.asarray([t.get("compute", t["total"]) for t in timings])
    phases: dict[str, list[float]] = {}
    for t in timings:
        for k, v in t.items():
            if k not in ("total", "compute"):
                phases.setdefault(k, []).append(v)
    stats = latency_stats(times)
    return {"backend": name, "batch": batch, "latency_ms": stats, "throughput": throughput(batch, stats["mean"]),
            "spread": relative_spread(times), "phases_ms": {k: float(np.mean(v)) * 1e3 for k, v in phases.items()}}


#: seconds between two "round k of n" lines while a batch is timed
PROGRESS_EVERY_S = 5.0


def profile_backends(factories: dict[str, Callable[[], BaseRunner]], batches: list[int], img_size: tuple[int, int],
                     *, warmup: int = 5, iters: int | None = 50, duration: float | None = None, seed: int = 0,
                     log: Callable[[str], None] = lambda s: None,
                     batch_ok: Callable[[str, int], str | None] = lambda name, b: None) -> list[dict]:
    """Time every backend at every batch size, the backends interleaved (tinyvim.tools.timing):
    all runners are built first, then at each batch size `warmup` rounds of one call each, then
    `iters` timed rounds (or rounds for about `duration` seconds per backend). Every backend gets
    the same input batch. `factories` maps a backend name to a callable making its runner;
    `batch_ok(name, batch)` returns a reason to skip a combination. Returns one entry per
    (backend, batch), backend by backend: {backend, batch, latency_ms{...}, throughput, spread,
    phases_ms} or {backend, batch, skipped: reason}."""
    rng = np.random.default_rng(seed)
    results: dict[tuple[str, int], dict] = {}
    total = len(factories) * len(batches)
    with contextlib.ExitStack() as stack:
        runners = {name: stack.enter_context(make()) for name, make in factories.items()}
        for b in batches:
            timed = []
            for name in runners:
                reason = batch_ok(name, b)
                if reason:
                    results[name, b] = {"backend": name, "batch": b, "skipped": reason}
                    log(f"[{len(results)}/{total}] {name} batch {b}: skipped ({reason})")
                else:
                    timed.append(name)
            if not timed:
                continue
            x = rng.standard_normal((b, 3, *img_size), dtype=np.float32)
            calls = {name: _timed_call(runners[name], {runners[name].input_names[0]: x}) for name in timed}
            rounds = plural(iters, "round") if duration is None else f"rounds for {duration * len(timed):g} s"
            log(f"batch {b}: timing {', '.join(timed)}{' in turn' if len(timed) > 1 else ''} "
                f"({plural(warmup, 'warm-up round')}, then {rounds})...")
            samples = interleave(calls, warmup=warmup, iters=None if duration else iters,
                                 duration=duration * len(timed) if duration else None,
                                 on_round=_progress(log, f"batch {b}", iters if duration is None else None))
            for name in timed:
                e = results[name, b] = _entry(name, b, samples[name])
                log(f"[{len(results)}/{total}] {name} batch {b}: {e['latency_ms']['mean']:.2f} ms mean, "
                    f"{e['throughput']:.1f} img/s")
    return [results[name, b] for name in factories for b in batches]


def _progress(log: Callable[[str], None], what: str, rounds: int | None) -> Callable[[int], None]:
    """on_round for interleave: 'batch 8: round 12 of 50' at most every PROGRESS_EVERY_S seconds."""
    last = time.perf_counter()

    def on_round(k: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if now - last >= PROGRESS_EVERY_S and k != rounds:      # the last round is said by its results
            last = now
            log(f"{what}: round {k}" + (f" of {rounds}" if rounds else ""))
    return on_round


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


def _matplotlib_pyplot():
    import_optional("matplotlib", what="matplotlib (for --plot)").use("Agg")   # no display needed
    return import_optional("matplotlib.pyplot", what="matplotlib (for --plot)")


def check_plot_output(path: str) -> None:
    """Before any timing: `path` is writable, its suffix a format we plot to, matplotlib present."""
    check_output_path(path, suffixes=PLOT_FORMATS, what="--plot")
    _matplotlib_pyplot()


def latency_figure(entries: list[dict], title: str = "", x: str = "batch", xlabel: str = "batch size",
                   stat: str = "mean"):
    """The matplotlib figure plot_latency writes: latency `stat` ('mean' or 'p50': what the table
    beside it shows) vs batch size (or another key `x` of the entries, e.g. concurrency), one line
    per backend, shaded up to p90. The x axis is log 2 with the measured values as its labels
    (1, 8, 32 - not 2^0, 2^3, 2^5)."""
    plt = _matplotlib_pyplot()
    ticker = import_optional("matplotlib.ticker", what="matplotlib (for --plot)")
    fig, ax = plt.subplots(figsize=(6, 4))
    measured = set()
    for backend in dict.fromkeys(e["backend"] for e in entries):
        pts = [(e[x], e["latency_ms"][stat], e["latency_ms"]["p90"])
               for e in entries if e["backend"] == backend and "latency_ms" in e]
        if not pts:
            continue
        xs, values, p90 = zip(*pts)
        measured.update(xs)
        ax.plot(xs, values, marker="o", label=backend)
        ax.fill_between(xs, values, p90, alpha=0.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"latency per call (ms, {stat}; band to p90)")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(ticker.FixedLocator(sorted(measured)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def profile_title(document: dict) -> str:
    """'TinyViM-S 224x224, int8 (s.int8.onnx), 2 threads': the model, what it computes in and
    which files were timed - a picture read alone says what it shows."""
    size = document["img_size"]
    models = document.get("models") or []
    files = ", ".join(f"{m['precision']} ({os.path.basename(m['path'])})" for m in models) or "fp32, exported on the fly"
    return (f"TinyViM-{document['variant'].upper()} {size[0]}x{size[1]}, {files}, "
            f"{document['settings']['threads']} threads")


def plot_latency(entries: list[dict], path: str, title: str = "", x: str = "batch", xlabel: str = "batch size",
                 stat: str = "mean") -> None:
    """latency_figure written to `path` (PNG, SVG or PDF by the suffix), atomically."""
    check_output_path(path, suffixes=PLOT_FORMATS, what="--plot")
    plt = _matplotlib_pyplot()
    fig = latency_figure(entries, title, x, xlabel, stat)
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=120, format=os.path.splitext(os.fspath(path))[1][1:].lower())
    finally:
        plt.close(fig)


def format_environment(env: dict, backends: Sequence[str]) -> str:
    """One line naming the machine and the software versions the figures belong to."""
    line = (f"CPU: {env['cpu']} ({env['cores']} cores, {env['threads']} threads); python {env['python']}, "
            f"torch {env['torch']}, onnxruntime {env['onnxruntime']}, onnx {env['onnx']}")
    extra = [f"{k} {env[k]}" for k in env.get("extra_versions", ())]
    if env.get("gpu"):
        extra.append(f"GPU {env['gpu']}")
    if env.get("tensorrt"):
        extra.append(f"TensorRT {env['tensorrt']}")
    return line + (", " + ", ".join(extra) if extra else "")


@dataclass(frozen=True)
class Timing:
    """How long each batch size is timed: `warmup` untimed rounds, then `iters` timed rounds (a
    round: one call of each backend, in turn) or rounds for about `duration` seconds per
    backend. Checked when built."""
    warmup: int = 5
    iters: int = 20
    duration: float | None = None

    def __post_init__(self) -> None:
        check_count(self.warmup, "--warmup", 0)
        if self.duration is not None:
            object.__setattr__(self, "duration", check_positive_float(self.duration, "--duration", MAX_DURATION_S))
        else:
            check_count(self.iters, "--iters")


def _export_for_profile(path: Path, model: ModelSpec, size: tuple[int, int], log) -> ModelInfo:
    """A dynamic-batch portable ONNX for backends that run one, when --model gave none."""
    log(f"exporting TinyViM-{model.variant.upper()} to a temporary ONNX...")
    export_onnx(path, model, InputSpec(size, None))
    return read_model_info(path)


def run_profile(backends, *, models: Sequence[str] = (), model: ModelOverrides = ModelOverrides(),
                img_size: tuple[int, int] | None = None, batches: Sequence[int] = (1,), timing: Timing = Timing(),
                threads: int | None = None, input_seed: int = 0, options: dict | None = None,
                log: Callable[[str], None] = print) -> dict:
    """`tinyvim profile`: time each backend at each batch size. Backends that run a file take the
    --model of their kind (an ONNX is exported on the fly where the backend allows it); the
    PyTorch backends build the model the files record, `model` overriding or filling in.
    `input_seed` seeds the random input batches. Returns the JSON document: settings,
    environment and one result per (backend, batch). Every argument is checked before anything
    is built; a run where every combination is skipped (nothing measured) is an error (exit 2)."""
    selected: list[Backend] = parse_backends(backends)
    if not batches:
        raise TinyvimError("--batch lists no batch size")
    for b in batches:
        check_batch(b)
    check_threads(threads)
    check_seed(input_seed)
    by_kind: dict[str, ModelInfo] = {}
    for m in models:
        info = read_model_info(m)
        if info.kind in by_kind:
            raise TinyvimError(f"two --model files of kind {info.kind} ({by_kind[info.kind].path}, {info.path}): "
                               "give one per kind")
        by_kind[info.kind] = info
    for backend in selected:   # before any note or export: the file it needs was not given
        if backend.runs_files and not backend.exports_onnx and not any(k in by_kind for k in backend.model_kinds):
            raise TinyvimError(missing_model_message(backend, list(by_kind.values())))
    known = next(iter(by_kind.values()), None)
    meta = known.metadata if known else None
    if model.variant is not None and meta is not None and model.variant != meta.variant:
        log(f"warning: --variant {model.variant} overrides the metadata of {known.path} "
            f"(TinyViM-{meta.variant.upper()}): the backends time different models")
    variant = model.variant or (meta.variant if meta else DEFAULT_VARIANT)
    if img_size:
        size = img_size
    else:
        size = (known.fixed_size if known and known.fixed_size else None) or \
            (meta.input_size if meta and meta.input_size else DEFAULT_IMG_SIZE)
    for info in by_kind.values():
        if info.fixed_size and info.fixed_size != size:
            raise TinyvimError(f"--img-size {format_size(size)} does not match {info.path} "
                               f"({format_size(info.fixed_size)})")
    for b in batches:
        check_workload(b, size)
    checkpoint, warnings = resolve_checkpoint(meta, model.checkpoint, required=False)
    warnings += unused_option_warnings(selected, dict(options or {}))
    for w in warnings:
        log(f"warning: {w}")
    recorded_seed = meta.init_seed if meta else 0
    spec = ModelSpec(variant, checkpoint=checkpoint, backbone=bool(known and known.backbone),
                     ema=model.ema if model.ema is not None else bool(meta and meta.ema and checkpoint),
                     weight_seed=recorded_seed if model.weight_seed is None else model.weight_seed,
                     allow_nonfinite=model.allow_nonfinite)
    note = random_weights_note(spec, who="the model")
    if note:
        log(note)
    threads = threads or default_threads()
    options = dict(options or {})

    # SIGTERM/SIGHUP unwind like Ctrl-C, so the temporary folder goes too
    with unwind_on_termination(), tempfile.TemporaryDirectory(prefix="tinyvim-profile-") as tmp:
        files: dict[str, ModelInfo | None] = {}
        for backend in selected:
            info = next((by_kind[k] for k in backend.model_kinds if k in by_kind), None)
            if backend.runs_files and info is None:
                if not backend.exports_onnx:
                    raise TinyvimError(missing_model_message(backend, list(by_kind.values())))
                info = by_kind["onnx"] = _export_for_profile(Path(tmp) / "tinyvim.onnx", spec, size, log)
            files[backend.name] = info
        request = functools.partial(RunnerRequest, spec=spec, timed=True, threads=threads, options=options, log=log)
        factories = {b.name: functools.partial(b.runner, request(model=files[b.name])) for b in selected}

        def batch_ok(name: str, b: int) -> str | None:
            info = files.get(name)
            return info.batch_problem(b) if info else None

        skipped = {batch_ok(name, b) for name in factories for b in batches}
        if None not in skipped:      # said before any runner is built, not after
            raise TinyvimError("nothing would be measured: every backend/batch combination is skipped "
                               f"({'; '.join(sorted(skipped))}): choose a batch the model takes")
        env = environment(threads)
        log(f"profiling TinyViM-{variant.upper()} {format_size(size)} on {', '.join(factories)}, batch "
            f"{', '.join(map(str, batches))}, {threads} thread(s)")
        with NoiseMonitor(threads) as monitor:
            entries = profile_backends(factories, list(batches), size, warmup=timing.warmup,
                                       iters=None if timing.duration else timing.iters, duration=timing.duration,
                                       seed=input_seed, log=log, batch_ok=batch_ok)
        noise = monitor.report({f"{e['backend']} batch {e['batch']}": e["spread"] for e in entries if "spread" in e})
    return {"schema_version": SCHEMA_VERSION, "variant": variant, "img_size": list(size), "checkpoint": checkpoint,
            "models": [{"path": i.path, "kind": i.kind, "precision": i.precision} for i in by_kind.values()],
            "noise": noise.to_dict(), "environment": env, "settings": {"warmup": timing.warmup,
                                             "iters": None if timing.duration else timing.iters,
                                             "duration_s": timing.duration, "interleaved": True,
                                             "threads": threads, "seed": input_seed,
                                             "options": {k: v for k, v in options.items() if v is not None}},
            "results": entries}


def missing_model_message(backend: Backend, given: list[ModelInfo]) -> str:
    """--backend X without a --model of a kind X runs: what was given, if anything, and how to get one."""
    what = backend.kinds_named()
    if given:
        named = ", ".join(f"{i.path} ({FILE_KIND_NAMES.get(i.kind, i.kind)})" for i in given)
        return f"--backend {backend.name} runs {what}, and --model gave {named}{backend_hint(backend)}"
    return f"--backend {backend.name} needs --model with {what}{backend_hint(backend)}"


def backend_hint(backend: Backend) -> str:
    return f" ({backend.missing_model_hint})" if backend.missing_model_hint else ""
