"""`tinyvim benchmark`: one table of every format x precision x backend that runs here - file size,
time to make it, top-1 and Δ vs PyTorch (with labelled pictures), agreement with the PyTorch
reference (top-1 agreement, worst per-picture cosine of the logits), p50 latency at batch 1,
throughput at the largest batch and the speed-up over eager PyTorch.

The rows are the backends' own declarations (`Backend.benchmark_rows`, tinyvim/backends/spec.py):
a backend registered later brings its rows with it. Each row names an artifact (spec.ARTIFACTS);
this module makes each artifact at most once (export, quantize, build an engine) and times how
long that took. A row that cannot run here says why (`skipped`); a row that fails says its
failure (`failed`) and the others go on.

Timings are interleaved (tinyvim.tools.timing): every repeat runs each timed row once in turn
(a, b, c, a, b, c, ...), so a load that comes and goes hits every row alike. The report flags a
noisy machine: a load average above half the usable cores before (or beyond its own threads after), or a row whose p90 is
more than NOISY_SPREAD times its p50.
"""
from __future__ import annotations

import contextlib
import csv
import functools
import io
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable


from tinyvim import __version__
from tinyvim.backends.base import BaseRunner
from tinyvim.backends.registry import RunnerRequest, backend_names, get_backend, read_model_info
from tinyvim.backends.spec import ARTIFACTS, BenchmarkRow
from tinyvim.backends.trt.builder import ProfileRequest, build_engine
from tinyvim.contract import (
    INPUT_NAME,
    InputSpec,
    ModelSpec,
    check_batch,
    check_count,
    check_threads,
    check_variant,
    check_workload,
)
from tinyvim.errors import TinyvimError, error_reason
from tinyvim.lazy import lazy_import
from tinyvim.export import export_onnx
from tinyvim.tools.datasets import open_labelled_set
from tinyvim.tools.environment import default_threads, environment
from tinyvim.tools.evaluate import MAX_WORKERS, labelled_batches, topk_hits
from tinyvim.tools.inputs import DEFAULT_CROP_PCT, iter_random_batches, list_images
from tinyvim.tools.noise import NoiseMonitor, relative_spread
from tinyvim.tools.profile import _matplotlib_pyplot, latency_stats
from tinyvim.tools.quantize import CalibrationRequest, cpu_has_vnni, quantize_onnx
from tinyvim.tools.timing import interleave
from tinyvim.utils import atomic_output, atomic_write_json, check_output_path

np = lazy_import("numpy")

SCHEMA_VERSION = 1
#: a row whose p90 exceeds its p50 by this factor was measured on a noisy machine
NOISY_SPREAD = 1.25
#: random pictures that calibrate int8/fp8 and measure agreement when no --data is given
RANDOM_PICTURES = 16
#: labelled pictures used at most by default (all rows run on all of them)
DEFAULT_LIMIT = 500
COLUMNS = ("row", "backend", "artifact", "precision", "status", "size_mb", "make_s", "top1", "delta_top1",
           "top1_agreement", "worst_cosine", "p50_ms_b1", "throughput", "speedup")


def row_key(label: str) -> str:
    """'ORT int8' -> 'ort-int8': how --formats names a row."""
    return "-".join(label.lower().split())


def all_rows() -> list[tuple[str, BenchmarkRow]]:
    """(backend name, row) for every row of every registered backend, in registration order."""
    return [(name, row) for name in backend_names() for row in get_backend(name).benchmark_rows]


def select_rows(formats: str | None) -> list[tuple[str, BenchmarkRow]]:
    """The rows --formats names (row keys like ort-int8, or backend names, comma-separated); all
    rows by default. The eager PyTorch row is always kept: it is the speed-up's baseline."""
    rows = all_rows()
    if not formats:
        return rows
    wanted = [w.strip().lower() for w in formats.split(",") if w.strip()]
    known = {row_key(r.label) for _, r in rows} | {b for b, _ in rows}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise TinyvimError(f"--formats {', '.join(unknown)}: unknown; choose from {', '.join(sorted(known))}")
    return [(b, r) for b, r in rows if r.artifact == "torch" or b in wanted or row_key(r.label) in wanted]


@dataclass
class Artifact:
    path: Path | None
    seconds: float
    size_bytes: int | None
    error: str | None = None


@dataclass
class _Row:
    backend: str
    spec: BenchmarkRow
    status: str = "ok"                   # ok | skipped | failed
    reason: str = ""
    runner: BaseRunner | None = None
    artifact: Artifact | None = None
    logits: list[np.ndarray] = field(default_factory=list)
    times: dict[int, list[float]] = field(default_factory=dict)


class ArtifactMaker:
    """Makes each artifact once, in `workdir`, timing it; a failure is kept and reported on
    every row that needs that artifact."""

    def __init__(self, workdir: Path, *, variant: str, checkpoint: str | None, img_size: tuple[int, int],
                 max_batch: int, calib_dir: str | None, threads: int, log: Callable[[str], None],
                 given: dict[str, str] | None = None):
        self.workdir, self.variant, self.checkpoint, self.img_size = workdir, variant, checkpoint, img_size
        self.spec = ModelSpec(variant=variant, checkpoint=checkpoint)
        self.max_batch, self.calib_dir, self.threads, self.log = max_batch, calib_dir, threads, log
        self.made: dict[str, Artifact] = {}
        for artifact, path in (given or {}).items():      # files the caller made: no make time
            self.made[artifact] = Artifact(Path(path), 0.0, Path(path).stat().st_size)
        # the rows run on this CPU: without VNNI its int8 kernels saturate on 8-bit weights
        # (tinyvim.tools.quantize), so the int8 file gets 7-bit weights here, as quantize advises
        self.reduce_range = cpu_has_vnni() is False

    def get(self, artifact: str) -> Artifact:
        if artifact not in self.made:
            start = time.perf_counter()
            try:
                path = self._make(artifact)
                size = path.stat().st_size if path is not None else (
                    os.path.getsize(self.checkpoint) if self.checkpoint else None)
                self.made[artifact] = Artifact(path, time.perf_counter() - start, size)
            except TinyvimError as exc:
                self.made[artifact] = Artifact(None, time.perf_counter() - start, None, str(exc))
            except Exception as exc:  # noqa: BLE001 - a broken artifact fails its rows, not the table
                self.made[artifact] = Artifact(None, time.perf_counter() - start, None,
                                               f"{type(exc).__name__}: {error_reason(exc, 200)}")
        return self.made[artifact]

    def _make(self, artifact: str) -> Path | None:
        if artifact == "torch":
            return None
        onnx = self.workdir / "model.onnx"
        if artifact == "onnx":
            self.log(f"exporting TinyViM-{self.variant.upper()} to ONNX")
            export_onnx(onnx, self.spec, InputSpec(size=self.img_size, batch=None))
            return onnx
        base = self.get("onnx")
        if base.error:
            raise TinyvimError(f"needs the fp32 ONNX, which failed: {base.error}")
        onnx = base.path
        if artifact in ("onnx-int8", "onnx-fp8"):
            dtype = artifact.split("-")[1]
            out = self.workdir / f"model.{dtype}.onnx"
            self.log(f"quantizing to {dtype}")
            calibration = CalibrationRequest(calib_dir=self.calib_dir, calib_random=None if self.calib_dir else
                                             RANDOM_PICTURES, max_images=DEFAULT_LIMIT)
            quantize_onnx(onnx, out, calibration, dtype=dtype, threads=self.threads,
                          reduce_range=self.reduce_range and dtype == "int8")
            return out
        precision = artifact.split("-")[1]
        source = self.get("onnx-int8").path if precision == "int8" else onnx
        if source is None:
            raise TinyvimError(f"needs the int8 ONNX, which failed: {self.get('onnx-int8').error}")
        out = self.workdir / f"model.{precision}.engine"
        self.log(f"building a TensorRT {precision} engine")
        build_engine(source, out, precision=precision,
                     shapes=ProfileRequest(min_batch=1, opt_batch=self.max_batch, max_batch=self.max_batch),
                     log=lambda m: None)
        return out


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / np.maximum(np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1), 1e-30)


def run_benchmark(*, variant: str = "s", checkpoint: str | None = None, img_size: tuple[int, int] = (224, 224),
                  data: str | os.PathLike | None = None, limit: int | None = DEFAULT_LIMIT, formats: str | None = None,
                  batches: tuple[int, ...] = (1, 8), iters: int = 20, warmup: int = 3, threads: int | None = None,
                  workdir: str | os.PathLike | None = None, workers: int = 2, calib: str | os.PathLike | None = None,
                  files: dict[str, str] | None = None, log: Callable[[str], None] = print) -> dict:
    """The table described in the module docstring, as a report dict (rows in registry order).
    calib: a folder of pictures that calibrates the int8/fp8 rows (default: `data` when it is a
    flat folder, else RANDOM_PICTURES seeded random images - say so in what you report).
    files: {artifact: path} already made (e.g. {'onnx': 'model.onnx'}, exported with a dynamic
    batch from the same variant and checkpoint); the others are made from them."""
    variant = check_variant(variant)
    check_threads(threads)
    check_count(iters, "--iters")
    check_count(warmup, "--warmup", 0)
    check_count(workers, "--workers", 1, MAX_WORKERS)
    if limit is not None:
        check_count(limit, "--limit")
    if not batches:
        raise TinyvimError("--batch: give at least one batch size, e.g. 1,8")
    for b in batches:
        check_batch(b)
        check_workload(b, img_size)
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise TinyvimError(f"--checkpoint {checkpoint}: no such file (or not a regular file)")
    _check_files(files or {})
    if calib is not None:
        list_images(calib, 1, DEFAULT_LIMIT, flag="--calib")
    if workdir is not None and os.path.exists(workdir) and not os.path.isdir(workdir):
        raise TinyvimError(f"--workdir {workdir}: not a folder (give a folder to keep the made files in)")
    dataset = open_labelled_set(data, limit=limit) if data is not None else None
    rows = [_Row(b, r) for b, r in select_rows(formats)]
    threads = threads or default_threads()
    env = environment(threads)
    cores = env["usable_cores"] or 1
    load_before = os.getloadavg()
    max_batch = max(batches)
    spec = ModelSpec(variant=variant, checkpoint=checkpoint)
    with contextlib.ExitStack() as stack:
        # the reference first: a checkpoint that does not load is refused before any export
        reference = stack.enter_context(get_backend("torch").runner(RunnerRequest(
            spec=spec, threads=threads, log=lambda m: None)))
        work = Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tinyvim-bench-")))
        work.mkdir(parents=True, exist_ok=True)
        maker = ArtifactMaker(work, variant=variant, checkpoint=checkpoint, img_size=img_size, max_batch=max_batch,
                              calib_dir=str(calib) if calib is not None else str(dataset.root) if dataset and
                              dataset.layout in ("val-txt", "loc-csv") else None, threads=threads, log=log,
                              given=files)
        for row in rows:
            why = row.spec.unavailable() if row.spec.unavailable else None
            if why:
                row.status, row.reason = "skipped", why
                continue
            row.artifact = maker.get(row.spec.artifact)
            if row.artifact.error:
                row.status, row.reason = "failed", row.artifact.error
                continue
            try:
                info = read_model_info(row.artifact.path) if row.artifact.path else None
                runner = get_backend(row.backend).runner(RunnerRequest(
                    model=info, spec=maker.spec, timed=row.spec.timed, threads=threads,
                    options=dict(row.spec.options), log=lambda m: None))
                row.runner = stack.enter_context(runner)
            except Exception as exc:  # noqa: BLE001 - one row's failure is reported in its row
                row.status, row.reason = "failed", (str(exc) if isinstance(exc, TinyvimError) else
                                                     f"{type(exc).__name__}: {error_reason(exc, 200)}")
        live = [r for r in rows if r.status == "ok"]

        # fidelity (and accuracy with labels): every row on the same pictures as the reference
        if dataset is not None:
            pictures = labelled_batches(dataset, max_batch, img_size, crop_pct=DEFAULT_CROP_PCT, mean=None, std=None,
                                        workers=workers, pad=False)
        else:
            pictures = ((x, None, None) for x in iter_random_batches(-(-RANDOM_PICTURES // max_batch), max_batch,
                                                                      img_size, seed=0))
        labels, ref_logits = [], []
        log("measuring fidelity" + (f" and top-1 on {len(dataset.items)} labelled pictures" if dataset else ""))
        for x, y, _ in pictures:
            ref_logits.append(_run(reference, x))
            if y is not None:
                labels.append(y)
            for row in live:
                logits = _guard(row, _run, row.runner, x)
                if logits is not None:
                    row.logits.append(logits)
        ref_all = np.concatenate(ref_logits)
        y_all = np.concatenate(labels) if labels else None

        # speed: interleaved repeats, every timed row once per repeat
        timed = [r for r in live if r.spec.timed and r.status == "ok"]
        log(f"timing {len(timed)} rows at batch {', '.join(map(str, batches))} ({iters} interleaved repeats)")
        with NoiseMonitor(threads) as monitor:     # the conditions `profile` reports too (tinyvim.tools.noise)
            for b in batches:
                feed = {INPUT_NAME: next(iter_random_batches(1, b, img_size, seed=1))}
                samples = interleave({str(i): functools.partial(_timed_infer, row, feed)
                                      for i, row in enumerate(timed)}, warmup=warmup, iters=iters)
                for i, row in enumerate(timed):
                    if samples[str(i)]:
                        row.times[b] = samples[str(i)]
    load_after = os.getloadavg()
    report = _report(rows, ref_all, y_all, batches, env, load_before, load_after, cores, variant, img_size,
                     checkpoint, dataset)
    report["noise"] = monitor.report({f"{r.spec.label} batch {b}": relative_spread(t) for r in timed
                                      for b, t in r.times.items() if r.status == "ok"}).to_dict()
    report["calibration"] = maker.calib_dir or f"{RANDOM_PICTURES} seeded random images"
    report["int8_weight_bits"] = 7 if maker.reduce_range else 8
    return report


def _check_files(files: dict[str, str]) -> None:
    """--file ARTIFACT=PATH: a file artifact, an existing file, of the kind and precision the
    artifact is (an engine for engine-*, else an ONNX; fp32 for onnx, int8 for onnx-int8, ...),
    read now rather than when its row comes up."""
    for artifact, path in files.items():
        if artifact not in ARTIFACTS or artifact == "torch":
            raise TinyvimError(f"--file {artifact}=...: not a file artifact; choose from {', '.join(ARTIFACTS[1:])}")
        if not os.path.isfile(path):
            raise TinyvimError(f"--file {artifact}={path}: no such file")
        want, _, precision = artifact.partition("-")
        try:
            info = read_model_info(path)
        except TinyvimError as exc:
            raise TinyvimError(f"--file {artifact}=...: {exc}") from None
        if info.kind != want:
            raise TinyvimError(f"--file {artifact}={path}: {_a(info.kind)} file, and {artifact} is {_a(want)} file")
        if info.precision != (precision or "fp32"):
            raise TinyvimError(f"--file {artifact}={path}: the file is {info.precision}, and {artifact} is "
                               f"{precision or 'fp32'}")


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def _run(runner: BaseRunner, x: np.ndarray) -> np.ndarray:
    return np.asarray(next(iter(runner.infer({INPUT_NAME: x}).values())), np.float32)


def _timed_infer(row: _Row, feed: dict) -> float | None:
    """One call of a row for interleave: its seconds by the wall clock, or None once the row has
    failed (said in its row; the other rows go on)."""
    if row.status != "ok":
        return None
    start = time.perf_counter()
    return None if _guard(row, row.runner.infer, feed) is None else time.perf_counter() - start


def _guard(row: _Row, fn, *args):
    """fn(*args); a failure marks the row failed (said in its row) instead of ending the table,
    and gives None."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001
        row.status = "failed"
        row.reason = str(exc) if isinstance(exc, TinyvimError) else f"{type(exc).__name__}: {error_reason(exc, 200)}"
        return None


def _report(rows, ref, labels, batches, env, load_before, load_after, cores, variant, img_size, checkpoint,
            dataset) -> dict:
    smallest, largest = min(batches), max(batches)
    ref_top1 = float(np.mean(ref.argmax(1) == labels)) if labels is not None else None
    eager = next((r for r in rows if r.spec.artifact == "torch" and r.times.get(smallest)), None)
    eager_p50 = latency_stats(eager.times[smallest])["p50"] if eager else None
    out, noisy = [], []
    for r in rows:
        entry = {"row": r.spec.label, "backend": r.backend, "artifact": r.spec.artifact, "precision": r.spec.precision,
                 "status": r.status, "reason": r.reason, "timed": r.spec.timed,
                 "size_mb": None, "make_s": None, "top1": None, "delta_top1": None, "top1_agreement": None,
                 "worst_cosine": None, "p50_ms_b1": None, "throughput": None, "speedup": None, "latency_ms": {}}
        if r.artifact is not None and r.artifact.error is None:
            entry["size_mb"] = None if r.artifact.size_bytes is None else r.artifact.size_bytes / 1e6
            entry["make_s"] = r.artifact.seconds
        if r.status == "ok" and r.logits:
            logits = np.concatenate(r.logits)
            entry["top1_agreement"] = float(np.mean(logits.argmax(1) == ref.argmax(1)))
            entry["worst_cosine"] = float(_cosines(logits, ref).min())
            if labels is not None:
                entry["top1"] = float(np.mean(topk_hits(logits, labels, 1)))
                entry["delta_top1"] = (entry["top1"] - ref_top1) * 100
        if r.status == "ok":
            for b, t in r.times.items():
                entry["latency_ms"][str(b)] = latency_stats(t)
            s = entry["latency_ms"].get(str(smallest))
            big = entry["latency_ms"].get(str(largest))
            if s:
                entry["p50_ms_b1"] = s["p50"]
                entry["speedup"] = eager_p50 / s["p50"] if eager_p50 else None
                if s["p90"] > NOISY_SPREAD * s["p50"]:
                    noisy.append(f"{r.spec.label}: p90 {s['p90']:.1f} ms is {s['p90'] / s['p50']:.2f}x its p50")
            if big:
                entry["throughput"] = largest * 1e3 / big["p50"]
        out.append(entry)
    # the load after the run counts the run's own threads (2 on a 2-core CI box: always over half the
    # cores); only what is beyond them is other work
    own = env.get("threads") or 0
    if max(load_before[0], load_after[0] - own) > cores / 2:
        noisy.insert(0, f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (the run's own "
                        f"{own} thread(s) included), on {cores} usable cores: other work was running")
    return {"schema_version": SCHEMA_VERSION, "tinyvim_version": __version__, "variant": variant,
            "img_size": list(img_size), "checkpoint": checkpoint, "batches": list(batches),
            "data": None if dataset is None else {"root": str(dataset.root), "pictures": len(dataset.items),
                                                  "layout": dataset.layout},
            "reference_top1": ref_top1, "rows": out, "noisy": noisy, "env": env,
            "load_average": {"before": list(load_before), "after": list(load_after)}}


# --------------------------------------------------------------------- outputs
def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_markdown(report: dict) -> str:
    b1, bmax = min(report["batches"]), max(report["batches"])
    head = ["format / precision", "backend", "size MB", "make s", "top-1 %", "Δ pts", "agree %", "worst cos",
            f"p50 ms (b{b1})", f"img/s (b{bmax})", "speed-up"]
    lines = [f"TinyViM-{report['variant'].upper()} {report['img_size'][0]}x{report['img_size'][1]} on "
             f"{report['env']['cpu']} ({report['env']['threads']} threads)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in report["rows"]:
        if e["status"] != "ok":
            lines.append(f"| {e['row']} | {e['backend']} | {e['status']}: {e['reason']} |" + " |" * (len(head) - 3))
            continue
        timing = [_cell(e["p50_ms_b1"], ".2f"), _cell(e["throughput"], ".1f"), _cell(e["speedup"], ".2f") + "x"] \
            if e["timed"] else ["fidelity only", "-", "-"]
        lines.append("| " + " | ".join([
            e["row"], e["backend"], _cell(e["size_mb"], ".1f"), _cell(e["make_s"], ".1f"),
            _cell(None if e["top1"] is None else e["top1"] * 100, ".2f"), _cell(e["delta_top1"], "+.2f"),
            _cell(None if e["top1_agreement"] is None else e["top1_agreement"] * 100, ".1f"),
            _cell(e["worst_cosine"], ".5f"), *timing]) + " |")
    notes = [f"int8 calibrated on {report['calibration']}, weights in {report['int8_weight_bits']} bits"]
    notes += [f"noisy: {n}" for n in report["noisy"]]
    if "noise" in report:      # a report written before the noise measurement has none
        notes.append(report["noise"]["verdict"])
    return "\n".join(lines + [""] + notes)


def format_csv(report: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS + ("reason",))
    for e in report["rows"]:
        writer.writerow([e[c] for c in COLUMNS] + [e["reason"]])
    return buf.getvalue()


def output_paths(out_dir: str | os.PathLike, plot: bool = True) -> list[Path]:
    """benchmark.md, .csv, .json (and .png) in `out_dir`, each checked writable - and matplotlib
    present for the plot - before minutes of benchmarking (one-line TinyvimError otherwise)."""
    out = Path(out_dir)
    paths = [out / f"benchmark.{s}" for s in ("md", "csv", "json")] + ([out / "benchmark.png"] if plot else [])
    for p in paths:
        check_output_path(p)
    if plot:
        _matplotlib_pyplot()
    return paths


def write_outputs(report: dict, out_dir: str | os.PathLike, plot: bool = True) -> list[Path]:
    """benchmark.md, .csv, .json and (plot=True) .png in `out_dir`, each written atomically."""
    paths = output_paths(out_dir, plot)
    for p, text in ((paths[0], format_markdown(report) + "\n"), (paths[1], format_csv(report))):
        with atomic_output(p) as tmp:
            tmp.write_text(text)
    atomic_write_json(paths[2], report)
    if plot:
        plot_latency_accuracy(report, paths[3])
    return paths


def plot_latency_accuracy(report: dict, path: Path) -> None:
    """p50 latency (log x) against top-1 (or top-1 agreement without labels), one point per timed row."""
    plt = _matplotlib_pyplot()
    key = "top1" if report["reference_top1"] is not None else "top1_agreement"
    fig, ax = plt.subplots(figsize=(6, 4))
    for e in report["rows"]:
        if e["status"] == "ok" and e["p50_ms_b1"] and e[key] is not None:
            ax.scatter(e["p50_ms_b1"], e[key] * 100)
            ax.annotate(e["row"], (e["p50_ms_b1"], e[key] * 100), fontsize=8, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency at batch {min(report['batches'])} (ms)")
    ax.set_ylabel("top-1 (%)" if key == "top1" else "top-1 agreement with PyTorch (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"TinyViM-{report['variant'].upper()} {report['img_size'][0]}x{report['img_size'][1]}")
    fig.tight_layout()
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
