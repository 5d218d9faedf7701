"""Accuracy-budget quantization (`tinyvim quantize --max-drop X --data DIR`): keep the fewest
regions of a Q/DQ model in float until its top-1 on held-out labelled pictures (any layout of
`tinyvim evaluate`; pictures not used for calibration) is at most X points below the fp32 model's.

Regions are TinyViM's own units, read from the weight names the export keeps: the stem
(patch_embed), each block's residual branch (network.S.J, and a TViM block's mixer .0 and FFN
.1 apart), each downsampler (network.S) and the head. A region "in float" has its Q/DQ pairs
removed and its fp32 weights back (`restore_float`), a cheap graph edit on the quantized model.

Sensitivity: the error each region adds when it alone is quantized is not what matters here;
what matters is what is won by taking it back to float from the fully quantized model. Each
region is restored alone, and its gain is the drop in mean squared logit error against the fp32
model on the held-out pictures (continuous, unlike top-1 on a few hundred pictures). Regions are
then restored in order of gain, and a binary search over how many finds the fewest that meet the
budget (the error falls close to monotonically along that order; the result is checked at the
count it returns). `validate --per-block` shows where error enters along the network; this
measures what taking each region back buys, which is what the budget needs.
"""
from __future__ import annotations

import functools
import os
import tempfile
import time
from pathlib import Path
from dataclasses import dataclass, field
from collections.abc import Callable


from tinyvim.backends.model_file import read_onnx_info
from tinyvim.backends.ort.runner import OrtRunner
from tinyvim.contract import INPUT_NAME
from tinyvim.errors import TinyvimError
from tinyvim.lazy import lazy_import
from tinyvim.tools.datasets import open_labelled_set
from tinyvim.tools.evaluate import labelled_batches
from tinyvim.tools.quantize import CALIBRATION_BATCH, CalibrationRequest, QuantizeResult, quantize_onnx
from tinyvim.tools.timing import interleave, wall_clock
from tinyvim.utils import atomic_output, check_output_paths

np = lazy_import("numpy")
onnx = lazy_import("onnx")

_QDQ = ("QuantizeLinear", "DequantizeLinear")
#: pictures of --data used at most to fit the budget
MAX_BUDGET_PICTURES = 2000
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


@dataclass
class BudgetResult:
    kept_float: list[str]                  # regions restored to float, in the order they were added
    ranking: list[tuple[str, float]]       # (region, gain in mean squared logit error), best first
    fp32: float                            # fp32 model's top-1
    int8: float                            # the plain quantized model's
    final: float                           # the returned model's
    drop_points: float                     # (fp32 - final) x 100
    int8_drop_points: float
    float_nodes: list[str] = field(default_factory=list)       # the kept regions' node names
    latency_ms: dict[str, float] = field(default_factory=dict)   # plain / budget, p50 at batch 1
    model: onnx.ModelProto | None = None
    pictures: int = 0
    seconds: float = 0.0


class _Scorer:
    """Runs candidate models on the held-out batches (decoded once) and scores them against the
    fp32 model's logits and the labels."""

    def __init__(self, batches: list[np.ndarray], labels: np.ndarray | None, threads: int | None):
        self.batches, self.labels, self.threads = batches, labels, threads
        self.ref: np.ndarray | None = None

    def logits(self, model: onnx.ModelProto | str) -> np.ndarray:
        source = model if isinstance(model, str) else model.SerializeToString()
        with OrtRunner(source, threads=self.threads, name="budget") as runner:
            return np.concatenate([np.asarray(next(iter(runner.infer({INPUT_NAME: b}).values()))) for b in self.batches])

    def accuracy(self, logits: np.ndarray) -> float:
        return float(np.mean(logits.argmax(1) == self.labels))

    def error(self, logits: np.ndarray) -> float:
        return float(np.mean((logits.astype(np.float64) - self.ref) ** 2))


def fit_budget(fp32_path: str | os.PathLike, qdq_path: str | os.PathLike, *, data: str | os.PathLike,
               max_drop: float, img_size: tuple[int, int], batch: int, mean=None, std=None,
               crop_pct: float = 0.875, threads: int | None = None, class_map=None,
               log: Callable[[str], None] = lambda m: None) -> BudgetResult:
    """Restore the fewest regions of `qdq_path` to float so that the top-1 drop against
    `fp32_path` on the labelled pictures in `data` is at most `max_drop` points. The returned
    BudgetResult holds the model; nothing is written here."""
    start = time.perf_counter()
    if not (isinstance(max_drop, (int, float)) and 0 <= max_drop <= 100):
        raise TinyvimError(f"--max-drop {max_drop!r}: give top-1 points from 0 to 100")
    dataset = open_labelled_set(data, class_map=class_map, limit=MAX_BUDGET_PICTURES)
    decoded = list(labelled_batches(dataset, batch, img_size, crop_pct=crop_pct, mean=mean, std=std, workers=2,
                                    pad=False))
    scorer = _Scorer([x for x, _, _ in decoded], np.concatenate([y for _, y, _ in decoded]), threads)
    source, qdq = onnx.load(os.fspath(fp32_path)), onnx.load(os.fspath(qdq_path))
    log(f"fitting the accuracy budget on {len(scorer.labels)} held-out pictures")
    scorer.ref = scorer.logits(os.fspath(fp32_path))
    if int(scorer.ref.shape[1]) <= int(scorer.labels.max()):
        raise TinyvimError(f"label {int(scorer.labels.max())} in {dataset.root} is outside the model's head of "
                           f"{scorer.ref.shape[1]} classes")
    fp32_acc = scorer.accuracy(scorer.ref)
    plain = scorer.logits(os.fspath(qdq_path))
    int8_acc, int8_err = scorer.accuracy(plain), scorer.error(plain)

    def drop(acc: float) -> float:
        return (fp32_acc - acc) * 100

    regions = quantized_regions(qdq, source)
    if drop(int8_acc) <= max_drop:
        kept: list[str] = []
        final_model, final_acc = qdq, int8_acc
        ranking: list[tuple[str, float]] = []
    else:
        log(f"ranking {len(regions)} regions by what restoring each to float wins")
        gains = {r: int8_err - scorer.error(scorer.logits(restore_float(qdq, source, set(nodes))))
                 for r, nodes in regions.items()}
        ranking = sorted(gains.items(), key=lambda kv: (-kv[1], kv[0]))
        order = [r for r, _ in ranking]

        def model_with(k: int) -> onnx.ModelProto:
            return restore_float(qdq, source, {n for r in order[:k] for n in regions[r]})

        # drop(lo) > budget; hi: the smallest count known to meet it (all regions: the fp32 model)
        lo, hi = 0, len(order)
        cache = {0: int8_acc, hi: scorer.accuracy(scorer.logits(model_with(hi)))}
        while hi - lo > 1:
            mid = (lo + hi) // 2
            cache[mid] = scorer.accuracy(scorer.logits(model_with(mid)))
            lo, hi = (lo, mid) if drop(cache[mid]) <= max_drop else (mid, hi)
        kept = order[:hi]
        final_model, final_acc = model_with(hi), cache[hi]
    result = BudgetResult(kept_float=kept, ranking=ranking, fp32=fp32_acc, int8=int8_acc, final=final_acc, drop_points=drop(final_acc),
                          int8_drop_points=drop(int8_acc), model=final_model, pictures=len(scorer.labels),
                          float_nodes=[n for r in kept for n in regions[r]])
    result.latency_ms = _latency(qdq, final_model, scorer.batches[0][:1], threads) if kept else {}
    result.seconds = time.perf_counter() - start
    return result


def _latency(plain: onnx.ModelProto, budget: onnx.ModelProto, x: np.ndarray, threads: int | None) -> dict[str, float]:
    """p50 ms at batch 1 of the plain and the budget model on ONNX Runtime, repeats interleaved."""
    with OrtRunner(plain.SerializeToString(), threads=threads, name="plain") as a, \
            OrtRunner(budget.SerializeToString(), threads=threads, name="budget") as b:
        times = interleave({key: wall_clock(functools.partial(runner.infer, {INPUT_NAME: x}))
                            for key, runner in (("plain", a), ("budget", b))}, warmup=2, iters=LATENCY_REPEATS)
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


def quantize_to_budget(model: str | os.PathLike, output: str | os.PathLike, calibration: CalibrationRequest, *,
                       max_drop: float, data: str | os.PathLike, class_map=None, threads: int | None = None,
                       log: Callable[[str], None] = lambda m: None, **quantize_args) -> tuple[QuantizeResult, BudgetResult]:
    """`quantize_onnx` into a temporary file, then `fit_budget` on `data`; the budget model is
    written to `output` (atomically, once). The folder and budget are checked before any work."""
    if not (isinstance(max_drop, (int, float)) and 0 <= max_drop <= 100):
        raise TinyvimError(f"--max-drop {max_drop!r}: give top-1 points from 0 to 100")
    open_labelled_set(data, class_map=class_map, limit=MAX_BUDGET_PICTURES)     # bad folders said first
    check_output_paths({"-o": output}, inputs={"MODEL": model}, suffixes={"-o": (".onnx",)})
    info = read_onnx_info(model)
    with tempfile.TemporaryDirectory(prefix="tinyvim-budget-") as tmp:
        plain = Path(tmp) / "plain.onnx"
        result = quantize_onnx(model, plain, calibration, threads=threads, log=log, **quantize_args)
        meta = result.metadata
        size = info.fixed_size or (meta.input_size if meta.input_size else (224, 224))
        budget = fit_budget(model, plain, data=data, max_drop=max_drop, img_size=size,
                            batch=info.fixed_batch or CALIBRATION_BATCH, mean=meta.mean, std=meta.std,
                            crop_pct=calibration.crop_pct, threads=threads, class_map=class_map, log=log)
        with atomic_output(output, suffix=".onnx") as out:
            onnx.save(budget.model, os.fspath(out))
    quantized = [n for n in result.quantized if n not in set(budget.float_nodes)]
    result.path, result.size_bytes, result.quantized = Path(output), Path(output).stat().st_size, quantized
    result.num_nodes = len(budget.model.graph.node)
    return result, budget
