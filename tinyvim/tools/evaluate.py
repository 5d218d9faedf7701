"""Accuracy on labelled pictures (`tinyvim evaluate`): top-1 / top-5 of any model file on any
backend the registry knows (or of the PyTorch model itself), and - on the very same
preprocessed batches - of the PyTorch reference, so the report says what an export, a
precision or a backend costs in accuracy: Δtop-1, top-1 agreement, the pictures on which the
two disagree most, per-class accuracy.

Memory is flat in the number of pictures: the folder is read as a list of paths
(tinyvim.tools.datasets), pictures are decoded `workers` at a time on threads, a few batches
ahead of the model (PIL, ONNX Runtime, OpenVINO and torch release the GIL, so decoding overlaps
inference), and every batch is folded into running counts and dropped. Preprocessing is
validate's (tinyvim.tools.inputs: resize to size / crop_pct, centre crop, the model's mean/std).

JSON report (`--json`), schema_version 1:

    {"schema_version": 1, "tinyvim_version": str, "passed": bool,       # every gate held
     "model": {"path": str, "kind": str, "metadata": {str: str}} | null, # null: the PyTorch model
     "backend": {"name": str, "options": {str: value}},
     "data": {"root": str, "layout": str, "pictures": int, "classes": int, "skipped_labels": int},
     "preprocessing": {"img_size": [H, W], "crop_pct": float, "mean": [3], "std": [3], "batch": int},
     "top1": float, "top5": float | null,                              # fractions; top5 null below 5 classes
     "reference": {"backend": "torch", "top1": float, "top5": float | null} | null,
     "delta_top1_points": float | null,                                # (top1 - reference top1) x 100
     "top1_agreement": float | null,                                   # same argmax as the reference
     "worst": [{"picture": str, "label": int, "prediction": int, "reference_prediction": int,
                "distance": float}],                                   # total variation of the softmaxes
     "per_class": [{"index": int, "name": str, "pictures": int, "top1": float}],
     "seconds": {"total": float, "model": float, "reference": float}, "images_per_s": float,
     "gates": {"min_top1": float | null, "max_drop": float | null, "failures": [str]},
     "warnings": [str]}
"""
from __future__ import annotations

import collections
import contextlib
import heapq
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from collections.abc import Callable, Iterator


from tinyvim import __version__
from tinyvim.backends.base import BaseRunner
from tinyvim.backends.registry import (
    RunnerRequest,
    check_model,
    default_backend_for,
    get_backend,
    read_model_info,
    unused_option_warnings,
)
from tinyvim.contract import (
    DEFAULT_IMG_SIZE,
    DEFAULT_VARIANT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INPUT_NAME,
    InputSpec,
    ModelOverrides,
    ModelSpec,
    check_count,
    check_threads,
    parse_size,
)
from tinyvim.errors import TinyvimError
from tinyvim.lazy import lazy_import
from tinyvim.tools.datasets import LabelledSet, open_labelled_set
from tinyvim.tools.environment import default_threads
from tinyvim.tools.inputs import DEFAULT_CROP_PCT, check_crop_pct, load_picture
from tinyvim.tools.reference import random_weights_note, resolve_reference

np = lazy_import("numpy")

SCHEMA_VERSION = 1
#: batch for a model whose batch is dynamic (and for the PyTorch model)
DEFAULT_EVAL_BATCH = 8
#: decoded batches kept ready ahead of the model: enough to hide decoding, few enough to stay small
PREFETCH_BATCHES = 2
MAX_WORKERS = 64
#: pictures listed under "worst" by default
WORST_PICTURES = 10

#: progress(pictures done, pictures in all, seconds so far, running top-1 fraction)
Progress = Callable[[int, int, float, float], None]


# --------------------------------------------------------------------- the numbers
def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def topk_hits(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(N,) bool: the label is among the k largest logits (ties: any k of them)."""
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k] if k < logits.shape[1] else \
        np.broadcast_to(np.arange(logits.shape[1]), logits.shape)
    return (top == labels[:, None]).any(axis=1)


class AccuracyMeter:
    """Running top-1/top-5 of a model (and of the reference, agreement with it, the pictures
    where the two disagree most), fed one batch at a time; its memory is per class, not per
    picture."""

    def __init__(self, num_classes: int, worst: int = WORST_PICTURES):
        self.num_classes = num_classes
        self.k5 = 5 if num_classes >= 5 else None
        self.count = 0
        self.hits1 = self.hits5 = self.ref_hits1 = self.ref_hits5 = self.agree = 0
        self.class_count = np.zeros(num_classes, np.int64)
        self.class_hits = np.zeros(num_classes, np.int64)
        self.worst = worst
        self._heap: list[tuple[float, str, int, int, int]] = []     # min-heap of the largest distances

    def update(self, logits: np.ndarray, labels: np.ndarray, names: list[str],
               ref_logits: np.ndarray | None = None) -> None:
        pred = logits.argmax(axis=1)
        hit = pred == labels
        self.count += len(labels)
        self.hits1 += int(hit.sum())
        np.add.at(self.class_count, labels, 1)
        np.add.at(self.class_hits, labels, hit.astype(np.int64))
        if self.k5:
            self.hits5 += int(topk_hits(logits, labels, self.k5).sum())
        if ref_logits is None:
            return
        ref_pred = ref_logits.argmax(axis=1)
        self.ref_hits1 += int((ref_pred == labels).sum())
        if self.k5:
            self.ref_hits5 += int(topk_hits(ref_logits, labels, self.k5).sum())
        self.agree += int((ref_pred == pred).sum())
        distance = 0.5 * np.abs(softmax(logits) - softmax(ref_logits)).sum(axis=1)
        for d, name, y, p, r in zip(distance, names, labels, pred, ref_pred):
            item = (float(d), name, int(y), int(p), int(r))
            if len(self._heap) < self.worst:
                heapq.heappush(self._heap, item)
            elif item > self._heap[0]:
                heapq.heapreplace(self._heap, item)

    @property
    def top1(self) -> float:
        return self.hits1 / self.count if self.count else 0.0

    def summary(self, with_reference: bool, class_name: Callable[[int], str]) -> dict:
        n = self.count
        ref = {"backend": "torch", "top1": self.ref_hits1 / n, "top5": self.ref_hits5 / n if self.k5 else None}
        return {
            "top1": self.hits1 / n, "top5": self.hits5 / n if self.k5 else None,
            "reference": ref if with_reference else None,
            "delta_top1_points": (self.hits1 - self.ref_hits1) / n * 100 if with_reference else None,
            "top1_agreement": self.agree / n if with_reference else None,
            "worst": [{"picture": name, "label": y, "prediction": p, "reference_prediction": r, "distance": d}
                      for d, name, y, p, r in sorted(self._heap, reverse=True)] if with_reference else [],
            "per_class": [{"index": i, "name": class_name(i), "pictures": int(c), "top1": int(h) / int(c)}
                          for i, (c, h) in enumerate(zip(self.class_count, self.class_hits)) if c],
        }


# --------------------------------------------------------------------- the pictures
def labelled_batches(data: LabelledSet, batch: int, size: tuple[int, int], *, crop_pct: float, mean, std,
                     workers: int, pad: bool) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
    """(pictures (B, 3, H, W), labels (n,), names) in the set's order, decoded on `workers`
    threads at most PREFETCH_BATCHES + 1 batches ahead. pad: fill the last batch to `batch`
    by repeating its last picture (for a fixed-batch model); labels and names cover the real
    pictures only."""
    items = data.items
    window = batch * (PREFETCH_BATCHES + 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tinyvim-decode") as pool:
        pending: collections.deque = collections.deque()
        submitted = 0
        try:
            for start in range(0, len(items), batch):
                while submitted < len(items) and len(pending) < window:
                    pending.append(pool.submit(load_picture, items[submitted][0], size, crop_pct, "--data", mean, std))
                    submitted += 1
                chunk = items[start:start + batch]
                arrays = [pending.popleft().result() for _ in chunk]
                if pad and len(arrays) < batch:
                    arrays += [arrays[-1]] * (batch - len(arrays))
                names = [os.path.relpath(p, data.root) for p, _ in chunk]
                yield np.stack(arrays), np.array([y for _, y in chunk], np.int64), names
        finally:
            for f in pending:
                f.cancel()


# --------------------------------------------------------------------- the job
@dataclass
class _Plan:
    runner: BaseRunner
    reference: BaseRunner | None
    info: object
    backend: str
    size: tuple[int, int]
    batch: int
    pad: bool
    mean: tuple
    std: tuple
    warnings: list[str]


def _check_gate(value, what: str, upper: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= upper:
        raise TinyvimError(f"{what} {value!r}: give top-1 points from 0 to {upper:g}")
    return float(value)


def _plan(model, *, backend, options, variant, checkpoint, ema, img_size, batch, threads, reference: bool,
          allow_nonfinite: bool, log) -> _Plan:
    options = dict(options or {})
    if model is None:
        target = get_backend(backend or "torch")
        if target.runs_files:
            raise TinyvimError(f"backend {target.name} runs a model file: give MODEL (or use --backend torch "
                               "with --checkpoint)")
        size = img_size if isinstance(img_size, tuple) else parse_size(img_size) if img_size else DEFAULT_IMG_SIZE
        inputs = InputSpec(size=size, batch=batch if batch is not None else DEFAULT_EVAL_BATCH)
        if checkpoint is not None and not os.path.isfile(checkpoint):
            raise TinyvimError(f"--checkpoint {checkpoint}: no such file (or not a regular file)")
        spec = ModelSpec(variant=variant or DEFAULT_VARIANT, checkpoint=checkpoint, ema=bool(ema),
                         allow_nonfinite=allow_nonfinite)
        note = random_weights_note(spec, "the model")
        if note:
            log(note)
        warnings = unused_option_warnings([target], options)
        runner = target.runner(RunnerRequest(spec=spec, threads=threads, options=options, log=log))
        return _Plan(runner, None, None, target.name, inputs.size, inputs.batch, False, IMAGENET_MEAN, IMAGENET_STD,
                     warnings)
    info = read_model_info(model)
    target = get_backend(backend) if backend else default_backend_for(info)
    check_model(target, info)
    if info.backbone:
        raise TinyvimError(f"{info.path} is a backbone (outputs {', '.join(info.output_names)}): evaluate needs a "
                           "classifier export")
    if batch is None and not info.fixed_batch and info.batch_problem(DEFAULT_EVAL_BATCH) is None:
        batch = DEFAULT_EVAL_BATCH
    size = img_size if isinstance(img_size, tuple) or img_size is None else parse_size(img_size)
    config, warnings = resolve_reference(info, ModelOverrides(variant=variant, checkpoint=checkpoint, ema=ema,
                                                              allow_nonfinite=allow_nonfinite),
                                         img_size=size, batch=batch)
    warnings += unused_option_warnings([target], options)
    note = random_weights_note(config.model)
    if note:
        log(note)
    meta = info.metadata
    runner = target.runner(RunnerRequest(model=info, threads=threads, options=options, log=log))
    ref = get_backend("torch").runner(RunnerRequest(spec=config.model, threads=threads, log=log)) if reference else None
    return _Plan(runner, ref, info, target.name, config.inputs.size, config.inputs.batch, bool(info.fixed_batch),
                 meta.mean if meta else IMAGENET_MEAN, meta.std if meta else IMAGENET_STD, warnings)


def evaluate_model(model: str | os.PathLike | None = None, *, data: str | os.PathLike, backend: str | None = None,
                   options: dict | None = None, variant: str | None = None, checkpoint: str | None = None,
                   ema: bool | None = None, img_size=None, batch: int | None = None,
                   class_map: str | os.PathLike | None = None, limit: int | None = None, workers: int = 2,
                   crop_pct: float = DEFAULT_CROP_PCT, threads: int | None = None, reference: bool = True,
                   worst: int = WORST_PICTURES, min_top1: float | None = None, max_drop: float | None = None,
                   allow_nonfinite: bool = False, progress: Progress | None = None,
                   log: Callable[[str], None] = print) -> dict:
    """`tinyvim evaluate`: top-1/top-5 of `model` on `backend` (default: the one for its file
    kind; model None: the PyTorch model from variant/checkpoint on a torch backend) over the
    labelled pictures in `data`, and the reference's on the same batches unless reference=False.
    Gates: min_top1 (percent) and max_drop (top-1 points below the reference) fill
    report["gates"]["failures"] and make report["passed"] false. Every argument and the folder
    are checked before any model is built; a head that does not fit the labels is said after the
    first batch (one-line TinyvimError; nothing is written here either way)."""
    check_threads(threads)
    check_crop_pct(crop_pct)
    check_count(workers, "--workers", 1, MAX_WORKERS)
    check_count(worst, "--worst", 0)
    min_top1 = _check_gate(min_top1, "--min-top1", 100.0)
    max_drop = _check_gate(max_drop, "--max-drop", 100.0)
    dataset = open_labelled_set(data, class_map=class_map, limit=limit)
    if not dataset.items:
        raise TinyvimError(f"--data {data}: no labelled pictures")
    threads = threads or default_threads()
    plan = _plan(model, backend=backend, options=options, variant=variant, checkpoint=checkpoint, ema=ema,
                 img_size=img_size, batch=batch, threads=threads, reference=reference,
                 allow_nonfinite=allow_nonfinite, log=log)
    if max_drop is not None and plan.reference is None:
        raise TinyvimError("--max-drop compares with the PyTorch reference: evaluate an exported MODEL, without "
                           "--no-reference")
    for w in plan.warnings:
        log(f"warning: {w}")
    max_label = max(y for _, y in dataset.items)
    meter: AccuracyMeter | None = None
    seconds = {"model": 0.0, "reference": 0.0}
    total = len(dataset.items)
    start = time.perf_counter()
    with plan.runner, (plan.reference or contextlib.nullcontext()):
        for pictures, labels, names in labelled_batches(dataset, plan.batch, plan.size, crop_pct=crop_pct,
                                                        mean=plan.mean, std=plan.std, workers=workers, pad=plan.pad):
            t0 = time.perf_counter()
            logits = _logits(plan.runner, pictures)[: len(labels)]
            t1 = time.perf_counter()
            ref = _logits(plan.reference, pictures)[: len(labels)] if plan.reference else None
            seconds["model"] += t1 - t0
            seconds["reference"] += time.perf_counter() - t1
            if meter is None:
                meter = AccuracyMeter(_check_head(logits.shape[1], dataset, max_label), worst)
            meter.update(logits, labels, names, ref)
            if progress:
                progress(meter.count, total, time.perf_counter() - start, meter.top1)
    elapsed = time.perf_counter() - start
    summary = meter.summary(plan.reference is not None, dataset.class_name)
    failures = []
    if min_top1 is not None and summary["top1"] * 100 < min_top1:
        failures.append(f"top-1 {summary['top1'] * 100:.2f} % is below --min-top1 {min_top1:g}")
    if max_drop is not None and -summary["delta_top1_points"] > max_drop:
        failures.append(f"top-1 dropped {-summary['delta_top1_points']:.2f} points below the PyTorch reference, more "
                        f"than --max-drop {max_drop:g}")
    info = plan.info
    return {
        "schema_version": SCHEMA_VERSION, "tinyvim_version": __version__, "passed": not failures,
        "model": None if info is None else {"path": info.path, "kind": info.kind,
                                            "metadata": info.metadata.to_props() if info.metadata else {}},
        "backend": {"name": plan.backend, "options": {k: v for k, v in (options or {}).items() if v is not None}},
        "data": {"root": str(dataset.root), "layout": dataset.layout, "pictures": meter.count,
                 "classes": meter.num_classes, "skipped_labels": dataset.skipped_labels},
        "preprocessing": {"img_size": list(plan.size), "crop_pct": crop_pct, "mean": list(plan.mean),
                          "std": list(plan.std), "batch": plan.batch},
        **summary,
        "seconds": {"total": round(elapsed, 3), **{k: round(v, 3) for k, v in seconds.items()}},
        "images_per_s": meter.count / elapsed if elapsed > 0 else None,
        "gates": {"min_top1": min_top1, "max_drop": max_drop, "failures": failures},
        "warnings": plan.warnings,
    }


def _logits(runner: BaseRunner, pictures: np.ndarray) -> np.ndarray:
    out = runner.infer({INPUT_NAME: pictures})
    logits = np.asarray(next(iter(out.values())), np.float32)
    if logits.ndim != 2:
        raise TinyvimError(f"{runner.name}: the model's output has shape {logits.shape}, not (batch, classes): "
                           "evaluate needs a classifier")
    return logits


def _check_head(classes: int, data: LabelledSet, max_label: int) -> int:
    if data.num_classes is not None and classes != data.num_classes:
        raise TinyvimError(f"the model's head has {classes} classes and the {data.layout} layout of {data.root} "
                           f"has {data.num_classes}: evaluate a model trained on these classes, or pass --class-map")
    if max_label >= classes:
        raise TinyvimError(f"label {max_label} in {data.root} is outside the model's head of {classes} classes "
                           f"(0..{classes - 1}): check the labels or --class-map")
    return classes


def format_report(report: dict) -> str:
    """The human-readable summary of a report (what the CLI prints)."""
    pct = lambda v: "-" if v is None else f"{v * 100:.2f} %"   # noqa: E731
    d = report["data"]
    lines = [f"{report['backend']['name']:<12} top-1 {pct(report['top1'])}  top-5 {pct(report['top5'])}  "
             f"({d['pictures']} pictures, {d['classes']} classes, {d['layout']}; "
             f"{report['images_per_s']:.1f} images/s)"]
    ref = report["reference"]
    if ref:
        lines.append(f"{'torch (ref)':<12} top-1 {pct(ref['top1'])}  top-5 {pct(ref['top5'])}")
        lines.append(f"Δtop-1 {report['delta_top1_points']:+.2f} points, top-1 agreement "
                     f"{pct(report['top1_agreement'])}")
        for w in report["worst"][:5]:
            if w["distance"] > 0:
                lines.append(f"  disagrees: {w['picture']} label {w['label']} -> {w['prediction']} "
                             f"(reference {w['reference_prediction']}, distance {w['distance']:.3f})")
    classes = sorted(report["per_class"], key=lambda c: c["top1"])[:3]
    if classes:
        lines.append("weakest classes: " + ", ".join(f"{c['name']} {c['top1'] * 100:.1f} % ({c['pictures']})"
                                                     for c in classes))
    for failure in report["gates"]["failures"]:
        lines.append(f"FAILED: {failure}")
    return "\n".join(lines)
