"""Accuracy-budget quantization (`tinyvim quantize --max-drop X`): keep the fewest regions of a
Q/DQ model in float until it is at most X points below the fp32 model on held-out pictures, by
one of two measures:

- top-1 (`--data DIR`, labelled, any layout of `tinyvim evaluate`; pictures not used for
  calibration): X is top-1 points below the fp32 model's top-1;
- top-1 agreement (no `--data`): every HOLDOUT_EVERY-th `--calib` picture is kept out of the
  calibration, and X is the share of those pictures (in points) whose top-1 class differs from
  the fp32 model's. The fp32 export stands in for PyTorch (validate holds it to PyTorch at fp32
  tolerance; quantize needs no torch nor checkpoint). Agreement needs no labels, and it is the
  stricter measure: a changed class costs a point even where both were wrong.

Regions are TinyViM's own units, read from the weight names the export keeps: the stem
(patch_embed), each block's residual branch (network.S.J, and a TViM block's mixer .0 and FFN
.1 apart), each downsampler (network.S) and the head. A region "in float" has its Q/DQ pairs
removed and its fp32 weights back (`restore_float`), a cheap graph edit on the quantized model.

Ranking. Two figures per region, both on the held-out pictures:
- entry (`validate --per-block`'s attribution): the plain Q/DQ model and the fp32 model run once
  each with the trunk's taps as outputs (stem and downsampler outputs, every residual add:
  `per_block.trunk_residuals`); a region's figure is how much the relative RMS error of the
  trunk grows from the tap before it to its own (the figures add up to the relative error of
  the logits). It says where error enters, in two sessions, but not what that error costs at
  the output: later layers amplify some of it and wash some out (on the fixture the stem lets in
  the most error, yet a stage-0 mixer's restoring wins more).
- gain (the order): restore the region alone and measure how much the mean squared logit error
  against the fp32 model falls - what keeping that region float buys, downstream effects
  included (continuous, unlike top-1 on a few hundred pictures). One ONNX Runtime session per
  region, so it is measured only for the candidates: the regions where CANDIDATE_SHARE of the
  error enters, by entry (at least MIN_CANDIDATES); a region that lets in little error cannot
  win much by being restored alone. On the fixture that is 5-6 of 31 regions, and they hold
  the regions of largest gain.
The candidates are restored in order of gain (ties by entry), then the other regions in order
of entry; a binary search over how many finds the fewest that meet the budget (the error falls
close to monotonically along that order; the result is checked at the count it returns, and
all regions restored is the fp32 model, which meets any budget).
"""
from __future__ import annotations

import functools
import os
import tempfile
import time
from pathlib import Path
from dataclasses import dataclass, field, replace
from collections.abc import Callable, Iterator


from tinyvim.backends.model_file import read_onnx_info
from tinyvim.backends.ort.runner import OrtRunner
from tinyvim.contract import INPUT_NAME
from tinyvim.errors import TinyvimError
from tinyvim.lazy import lazy_import
from tinyvim.tools.datasets import open_labelled_set
from tinyvim.tools.evaluate import labelled_batches
from tinyvim.tools.inputs import load_picture
from tinyvim.tools.per_block import trunk_residuals
from tinyvim.tools.quantize import (
    CALIBRATION_BATCH,
    QUANTIZED_OP_TYPES,
    CalibrationProgress,
    CalibrationRequest,
    QuantizeResult,
    quantize_onnx,
)
from tinyvim.tools.timing import interleave, wall_clock
from tinyvim.utils import atomic_output, check_output_paths

np = lazy_import("numpy")
onnx = lazy_import("onnx")

_QDQ = ("QuantizeLinear", "DequantizeLinear")
#: pictures of --data used at most to fit the budget
MAX_BUDGET_PICTURES = 2000
#: without --data, every HOLDOUT_EVERY-th --calib picture is held out (1 in 4: 128 of the default 512)
HOLDOUT_EVERY = 4
#: restore-one candidates: the regions where this share of the trunk's error enters (by entry figure) ...
CANDIDATE_SHARE = 0.9
#: ... and at least this many
MIN_CANDIDATES = 4
#: timing repeats (interleaved) behind the latency cost of the float regions
LATENCY_REPEATS = 10


def region_of(weight_name: str) -> str:
    """'network.4.3.fn.1.weight' -> 'network.4.3'; 'network.6.5.0.fn.x_proj' -> 'network.6.5.0';
    'network.3.proj.c.weight' -> 'network.3'; 'patch_embed.2.c.weight' -> 'patch_embed'; 'head.weight' -> 'head'."""
    name = weight_name.removesuffix("_quantized")
    if ".fn." in name:
        return name.split(".fn.")[0]
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "network" else parts[0]


def quantized_regions(qdq: onnx.ModelProto, source: onnx.ModelProto) -> dict[str, list[str]]:
    """{region: names of its quantized nodes}, in graph order: nodes that read a DequantizeLinear
    on their weight input, grouped by the fp32 weight they had in `source`."""
    before = {n.name: n for n in source.graph.node}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    regions: dict[str, list[str]] = {}
    for node in qdq.graph.node:
        if node.op_type in _QDQ or len(node.input) < 2 or node.name not in before:
            continue
        dq = producer.get(node.input[1])
        if dq is not None and dq.op_type == "DequantizeLinear":
            regions.setdefault(region_of(before[node.name].input[1]), []).append(node.name)
    return regions


def restore_float(qdq: onnx.ModelProto, source: onnx.ModelProto, nodes: set[str]) -> onnx.ModelProto:
    """A copy of `qdq` in which `nodes` read their fp32 inputs and weights again (as in `source`);
    the Q/DQ nodes and quantized weights nothing reads any more are removed."""
    out = onnx.ModelProto()
    out.CopyFrom(qdq)
    before = {n.name: n for n in source.graph.node}
    fp32_weights = {i.name: i for i in source.graph.initializer}
    have = {i.name for i in out.graph.initializer}
    for node in out.graph.node:
        if node.name in nodes:
            original = before[node.name]
            del node.input[:]
            node.input.extend(original.input)
            for name in original.input:
                if name in fp32_weights and name not in have:
                    out.graph.initializer.append(fp32_weights[name])
                    have.add(name)
    _prune(out.graph)
    return out


def _prune(graph: onnx.GraphProto) -> None:
    """Drop Q/DQ nodes whose outputs nothing reads, until none is left, then unread initializers."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [k for k, n in enumerate(graph.node) if n.op_type in _QDQ and not any(o in read for o in n.output)]
        if not dead:
            break
        for k in reversed(dead):
            del graph.node[k]
    read = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in read]
    del graph.initializer[:]
    graph.initializer.extend(keep)


@dataclass(frozen=True)
class HeldOut:
    """The pictures the budget is measured on, decoded once: batches at the model's batch, the
    real pictures in each (a fixed-batch model's last batch is filled up), and the labels - or
    None, and the budget is top-1 agreement with the fp32 model."""
    batches: tuple[np.ndarray, ...]
    counts: tuple[int, ...]
    labels: np.ndarray | None
    source: str                       # what they are, for the report

    @property
    def measure(self) -> str:
        return "top1" if self.labels is not None else "agreement"

    @property
    def pictures(self) -> int:
        return sum(self.counts)


def labelled_held_out(data: str | os.PathLike, *, img_size: tuple[int, int], batch: int, fixed_batch: bool,
                      mean=None, std=None, crop_pct: float = 0.875, class_map=None) -> HeldOut:
    """The labelled pictures of `data` (at most MAX_BUDGET_PICTURES, spread over the folder)."""
    dataset = open_labelled_set(data, class_map=class_map, limit=MAX_BUDGET_PICTURES)
    decoded = list(labelled_batches(dataset, batch, img_size, crop_pct=crop_pct, mean=mean, std=std, workers=2,
                                    pad=fixed_batch))
    return HeldOut(tuple(x for x, _, _ in decoded), tuple(len(y) for _, y, _ in decoded),
                   np.concatenate([y for _, y, _ in decoded]), f"{dataset.root}")


def unlabelled_held_out(files: list[Path], *, img_size: tuple[int, int], batch: int, fixed_batch: bool,
                        mean=None, std=None, crop_pct: float = 0.875) -> HeldOut:
    """The held-out --calib pictures (no labels: the budget is agreement with the fp32 model)."""
    batches, counts = [], []
    for lo in range(0, len(files), batch):
        arrays = [load_picture(f, img_size, crop_pct, "--calib", mean, std) for f in files[lo:lo + batch]]
        counts.append(len(arrays))
        if fixed_batch:
            arrays += [arrays[-1]] * (batch - len(arrays))
        batches.append(np.stack(arrays))
    return HeldOut(tuple(batches), tuple(counts), None, f"every {HOLDOUT_EVERY}th picture of {files[0].parent}")


@dataclass
class BudgetResult:
    measure: str                           # "top1" (labelled pictures) | "agreement" (with the fp32 model)
    kept_float: list[str]                  # regions restored to float, in the order they were added
    ranking: list[dict]                    # {"region", "gain" (None: not a candidate), "entry"}, in restore order
    fp32: float                            # fp32 model's score: its top-1, or 1.0 (it agrees with itself)
    int8: float                            # the plain quantized model's
    final: float                           # the returned model's
    drop_points: float                     # (fp32 - final) x 100
    int8_drop_points: float
    float_nodes: list[str] = field(default_factory=list)       # the kept regions' node names
    latency_ms: dict[str, float] = field(default_factory=dict)   # plain / budget, p50 at batch 1
    model: onnx.ModelProto | None = None
    pictures: int = 0
    source: str = ""
    seconds: float = 0.0


class _Scorer:
    """Runs candidate models on the held-out batches and scores them against the fp32 model's
    logits (`ref`) and the labels (or the fp32 model's classes, without labels)."""

    def __init__(self, held: HeldOut, threads: int | None):
        self.held, self.threads = held, threads
        self.ref: np.ndarray | None = None

    def run(self, model: onnx.ModelProto | str, outputs: list[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """{output: the real pictures' values}, batch by batch."""
        source = model if isinstance(model, str) else model.SerializeToString()
        with OrtRunner(source, threads=self.threads, name="budget") as runner:
            for x, n in zip(self.held.batches, self.held.counts):
                values = runner.infer({INPUT_NAME: x})
                yield {k: np.asarray(values[k])[:n] for k in (outputs or list(values)[:1])}

    def logits(self, model: onnx.ModelProto | str) -> np.ndarray:
        return np.concatenate([next(iter(v.values())) for v in self.run(model)])

    def score(self, logits: np.ndarray) -> float:
        """top-1 against the labels, or top-1 agreement with the fp32 model."""
        truth = self.held.labels if self.held.labels is not None else self.ref.argmax(1)
        return float(np.mean(logits.argmax(1) == truth))

    def error(self, logits: np.ndarray) -> float:
        return float(np.mean((logits.astype(np.float64) - self.ref) ** 2))


def region_taps(source: onnx.ModelProto) -> dict[str, str]:
    """{region: the trunk tensor where its output joins the spine}, for every weighted region of
    the fp32 graph in graph order: a block's (or a TViM mixer's / FFN's) residual add, the spine
    entering the next block for the stem and a downsampler, the model output for the head (and
    anything else after the last block). Raises TinyvimError where the trunk cannot be followed."""
    inits = {i.name for i in source.graph.initializer}
    order: list[str] = []
    for node in source.graph.node:
        if node.op_type in QUANTIZED_OP_TYPES and len(node.input) > 1 and node.input[1] in inits:
            region = region_of(node.input[1])
            if region not in order:
                order.append(region)
    blocks = [r for r in order if r.startswith("network.") and r.count(".") >= 2]
    residuals = trunk_residuals(source.graph, len(blocks))
    taps, k = {}, 0
    for region in order:
        if region in blocks:
            taps[region] = residuals[k].out
            k += 1
        else:
            taps[region] = residuals[k].spine_in if k < len(residuals) else source.graph.output[0].name
    return taps


def entry_errors(scorer: _Scorer, source: onnx.ModelProto, qdq: onnx.ModelProto) -> dict[str, float]:
    """{region: growth of the trunk's relative RMS error (plain Q/DQ vs fp32) from the tap before
    it to its own} (module docstring: the per-block attribution); {} when the taps cannot be
    found in both graphs. Two sessions, the taps' sums of squares accumulated batch by batch."""
    try:
        taps = region_taps(source)
    except TinyvimError:
        return {}
    tensors = list(dict.fromkeys(taps.values()))
    produced = {o for n in qdq.graph.node for o in n.output}
    if not all(t in produced for t in tensors):
        return {}

    def marked(proto: onnx.ModelProto) -> onnx.ModelProto:
        out = onnx.ModelProto()
        out.CopyFrom(proto)
        present = {o.name for o in out.graph.output}
        for name in tensors:
            if name not in present:
                out.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        return out

    diff = dict.fromkeys(tensors, 0.0)
    norm = dict.fromkeys(tensors, 0.0)
    for ref, got in zip(scorer.run(marked(source), tensors), scorer.run(marked(qdq), tensors)):
        for name in tensors:
            r = ref[name].astype(np.float64)
            diff[name] += float(np.sum((got[name].astype(np.float64) - r) ** 2))
            norm[name] += float(np.sum(r * r))
    relative = {t: (diff[t] / norm[t]) ** 0.5 if norm[t] > 0 else 0.0 for t in tensors}
    entries, before = {}, 0.0
    for region, tap in taps.items():
        entries[region] = relative[tap] - before
        before = relative[tap]
    return entries


def fit_budget(fp32_path: str | os.PathLike, qdq_path: str | os.PathLike, held: HeldOut, *, max_drop: float,
               threads: int | None = None, log: Callable[[str], None] = lambda m: None) -> BudgetResult:
    """Restore the fewest regions of `qdq_path` to float so that its score on `held` (top-1 with
    labels, else top-1 agreement with `fp32_path`) is at most `max_drop` points below the fp32
    model's. The returned BudgetResult holds the model; nothing is written here."""
    start = time.perf_counter()
    check_max_drop(max_drop)
    scorer = _Scorer(held, threads)
    source, qdq = onnx.load(os.fspath(fp32_path)), onnx.load(os.fspath(qdq_path))
    what = "top-1" if held.measure == "top1" else "top-1 agreement with the fp32 model"
    log(f"fitting the accuracy budget ({what}) on {held.pictures} held-out pictures")
    scorer.ref = scorer.logits(os.fspath(fp32_path))
    if held.labels is not None and int(scorer.ref.shape[1]) <= int(held.labels.max()):
        raise TinyvimError(f"label {int(held.labels.max())} in {held.source} is outside the model's head of "
                           f"{scorer.ref.shape[1]} classes")
    fp32_score = scorer.score(scorer.ref)
    plain = scorer.logits(os.fspath(qdq_path))
    int8_score, int8_err = scorer.score(plain), scorer.error(plain)

    def drop(score: float) -> float:
        return (fp32_score - score) * 100

    def holds(score: float) -> bool:      # scores are counts / pictures: a hair of rounding is no miss
        return drop(score) <= max_drop + 1e-9

    regions = quantized_regions(qdq, source)
    if holds(int8_score):
        kept: list[str] = []
        final_model, final_score = qdq, int8_score
        ranking: list[dict] = []
    else:
        entries = entry_errors(scorer, source, qdq)
        candidates = restore_candidates(list(regions), entries)
        log(f"ranking {len(candidates)} of {len(regions)} regions (where {CANDIDATE_SHARE:.0%} of the error enters) "
            "by what restoring each to float wins")
        gains = {r: int8_err - scorer.error(scorer.logits(restore_float(qdq, source, set(regions[r]))))
                 for r in candidates}
        rest = [r for r in regions if r not in gains]
        order = (sorted(candidates, key=lambda r: (-gains[r], -entries.get(r, 0.0), r))
                 + sorted(rest, key=lambda r: (-entries[r], r)))
        ranking = [{"region": r, "gain": gains.get(r), "entry": entries.get(r)} for r in order]

        def model_with(k: int) -> onnx.ModelProto:
            return restore_float(qdq, source, {n for r in order[:k] for n in regions[r]})

        cache = {0: int8_score}

        def score_with(k: int) -> float:
            if k not in cache:
                cache[k] = scorer.score(scorer.logits(model_with(k)))
            return cache[k]

        # lo: a count known to miss the budget; hi: the smallest known to meet it - at first all
        # regions, which is the fp32 graph itself (measured below when it is the answer). The
        # candidates usually suffice: try them all first, then search below or above.
        lo, hi = 0, len(order)
        if 0 < len(candidates) < hi:
            lo, hi = (lo, len(candidates)) if holds(score_with(len(candidates))) else (len(candidates), hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if holds(score_with(mid)) else (mid, hi)
        kept = order[:hi]
        final_model, final_score = model_with(hi), score_with(hi)
    result = BudgetResult(measure=held.measure, kept_float=kept, ranking=ranking, fp32=fp32_score, int8=int8_score,
                          final=final_score, drop_points=drop(final_score), int8_drop_points=drop(int8_score),
                          model=final_model, pictures=held.pictures, source=held.source,
                          float_nodes=[n for r in kept for n in regions[r]])
    result.latency_ms = _latency(qdq, final_model, held.batches[0][:1], threads) if kept else {}
    result.seconds = time.perf_counter() - start
    return result


def restore_candidates(regions: list[str], entries: dict[str, float]) -> list[str]:
    """The regions worth restoring one by one: by entry, largest first, until they hold
    CANDIDATE_SHARE of the summed positive entry (at least MIN_CANDIDATES); all regions when
    the entry figures are missing. The others cannot win much alone: they follow in entry order."""
    if not entries or any(r not in entries for r in regions):
        return list(regions)
    by_entry = sorted(regions, key=lambda r: (-entries[r], r))
    total = sum(max(e, 0.0) for e in entries.values())
    chosen, held = [], 0.0
    for region in by_entry:
        if len(chosen) >= MIN_CANDIDATES and held >= CANDIDATE_SHARE * total:
            break
        chosen.append(region)
        held += max(entries[region], 0.0)
    return chosen


def check_max_drop(max_drop) -> float:
    if isinstance(max_drop, bool) or not (isinstance(max_drop, (int, float)) and 0 <= max_drop <= 100):
        raise TinyvimError(f"--max-drop {max_drop!r}: give points from 0 to 100")
    return float(max_drop)


def _latency(plain: onnx.ModelProto, budget: onnx.ModelProto, x: np.ndarray, threads: int | None) -> dict[str, float]:
    """p50 ms at batch 1 of the plain and the budget model on ONNX Runtime, repeats interleaved."""
    with OrtRunner(plain.SerializeToString(), threads=threads, name="plain") as a, \
            OrtRunner(budget.SerializeToString(), threads=threads, name="budget") as b:
        times = interleave({key: wall_clock(functools.partial(runner.infer, {INPUT_NAME: x}))
                            for key, runner in (("plain", a), ("budget", b))}, warmup=2, iters=LATENCY_REPEATS)
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


def quantize_to_budget(model: str | os.PathLike, output: str | os.PathLike, calibration: CalibrationRequest, *,
                       max_drop: float, data: str | os.PathLike | None = None, class_map=None,
                       threads: int | None = None, log: Callable[[str], None] = lambda m: None,
                       progress: CalibrationProgress | None = None,
                       **quantize_args) -> tuple[QuantizeResult, BudgetResult]:
    """`quantize_onnx` into a temporary file, then `fit_budget` on the labelled pictures of `data`
    or, without it, on every HOLDOUT_EVERY-th --calib picture (kept out of the calibration);
    the budget model is written to `output` (atomically, once). The budget, the folders and
    the output are checked before any work."""
    check_max_drop(max_drop)
    if data is None:
        calibration = replace(calibration, holdout_every=HOLDOUT_EVERY)    # refuses --calib-random
        held_files = calibration.held_out_files()                         # too few pictures said now
    else:
        open_labelled_set(data, class_map=class_map, limit=MAX_BUDGET_PICTURES)     # bad folders said first
    check_output_paths({"-o": output}, inputs={"MODEL": model}, suffixes={"-o": (".onnx",)})
    info = read_onnx_info(model)
    with tempfile.TemporaryDirectory(prefix="tinyvim-budget-") as tmp:
        plain = Path(tmp) / "plain.onnx"
        result = quantize_onnx(model, plain, calibration, threads=threads, log=log, progress=progress,
                               **quantize_args)
        meta = result.metadata
        picture = dict(img_size=info.fixed_size or (meta.input_size if meta.input_size else (224, 224)),
                       batch=info.fixed_batch or CALIBRATION_BATCH, fixed_batch=bool(info.fixed_batch),
                       mean=meta.mean, std=meta.std, crop_pct=calibration.crop_pct)
        held = (labelled_held_out(data, class_map=class_map, **picture) if data is not None
                else unlabelled_held_out(held_files, **picture))
        budget = fit_budget(model, plain, held, max_drop=max_drop, threads=threads, log=log)
        with atomic_output(output, suffix=".onnx") as out:
            onnx.save(budget.model, os.fspath(out))
    quantized = [n for n in result.quantized if n not in set(budget.float_nodes)]
    result.path, result.size_bytes, result.quantized = Path(output), Path(output).stat().st_size, quantized
    result.num_nodes = len(budget.model.graph.node)
    return result, budget


def budget_report(budget: BudgetResult, max_drop: float) -> dict:
    """The "budget" section of `quantize --json`."""
    return {"max_drop": max_drop, "measure": budget.measure, "pictures": budget.pictures, "source": budget.source,
            "kept_float": budget.kept_float, "ranking": budget.ranking,
            "scores": {"fp32": budget.fp32, "plain": budget.int8, "final": budget.final},
            "drop_points": budget.drop_points, "plain_drop_points": budget.int8_drop_points,
            "latency_ms": budget.latency_ms}
