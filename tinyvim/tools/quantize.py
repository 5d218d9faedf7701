"""Explicit quantization (`tinyvim quantize`): an fp32 TinyViM ONNX in, a Q/DQ ONNX out, for
TensorRT (>= 11 builds INT8/FP8 only from Q/DQ nodes; no calibrator, no precision flags),
ONNX Runtime and OpenVINO alike.

What the graph holds (checked by `qdq_problems` before anything is written):
- every Conv / MatMul / Gemm with a weight initializer gets a QuantizeLinear -> DequantizeLinear
  pair of its own on its activation input (per tensor, symmetric: zero point 0) and its weight
  stored quantized (int8 or float8e4m3fn) behind a DequantizeLinear, per output channel
  (Conv axis 0, Gemm by transB, MatMul axis 1); biases stay fp32 (TensorRT fuses them itself);
- outputs are not quantized (TensorRT's placement advice: the GELU, softplus and residual
  after a convolution read its high-precision output), and every other consumer of a quantized
  tensor (residual adds, the SS2D's high-frequency branch) keeps reading the fp32 tensor;
- the SS2D scan (its activation x activation MatMuls, Exp, CumSum...), softplus and the
  LayerNorm statistics have no weight: they stay fp32, as do plugin CrossSelectiveScan nodes,
  which are left byte for byte as they were;
- a Conv whose input comes from a Concat (each SS2D's out_proj, ~2.5 % of TinyViM-S's MACs)
  stays fp32: OpenVINO 2026.4's CPU plugin computes Concat -> Q/DQ -> Conv ~40 % wrong (a
  five-node graph reproduces it, tests/test_quantize.py), whatever the Q/DQ placement.

Why ONNX Runtime's `quantize_static` and not NVIDIA's ModelOpt (nvidia-modelopt 0.47, the
`onnx` extra its ONNX PTQ needs): on Linux x86-64 that extra pins onnx~=1.21 (we run 1.23),
onnxruntime-gpu~=1.24 (it shares the `onnxruntime` package folder with the CPU build we use;
never both), and pulls cupy-cuda12x, lief and cppimport - a CUDA stack on CPU-only machines.
quantize_static writes the same TensorRT-style graph with the options below and is already
installed. The calibration is ours: the activation ranges come from tinyvim's ORT runner
(which also runs the plugin flavour's custom node, which ORT's own calibrator cannot), and are
handed to quantize_static as its calibration cache: max |x| (minmax) or a percentile of |x|
(collect_ranges).

Weights in 7 bits (`reduce_range`, [-64, 64]): x86 CPUs without VNNI (AVX2 and early
AVX-512: Zen 1-3, Haswell..Skylake) multiply int8 with vpmaddubsw, whose 16-bit pair sums
saturate when full-range weights meet large activations; OpenVINO's int8 convolutions then go
wrong (TinyViM-S: cosine 0.994 instead of 0.9998 on a Zen 3), and so do ONNX Runtime's where it
fuses a DQ -> Conv -> Q chain into QLinearConv (0.9990). VNNI/AMX CPUs and GPUs compute 8-bit
weights exactly, so 8 bits is the default; `saturation_warning` says so on a CPU without VNNI.

FP8 (`dtype="fp8"`, opset >= 19): the same nodes and ranges with float8e4m3fn Q/DQ, scales
amax / 448 (e4m3's largest value) per tensor for activations and per channel for weights.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from collections.abc import Callable, Iterator


from tinyvim.backends.model_file import read_onnx_info
from tinyvim.backends.ort.runner import OrtRunner
from tinyvim.contract import (
    CALIBRATION_METHODS,
    DEFAULT_IMG_SIZE,
    DEFAULT_QDQ_PLACEMENT,
    DEFAULT_PERCENTILE,
    FP32,
    INT8,
    INPUT_NAME,
    MAX_CALIBRATION_SAMPLES,
    QDQ_PLACEMENTS,
    QUANTIZED_PRECISIONS,
    SCAN_PLUGIN,
    Precision,
    ExportMetadata,
    QuantizationInfo,
    calibration_method_name,
    check_count,
    check_percentile,
    check_seed,
    check_threads,
    check_input_size,
    check_workload,
)
from tinyvim.errors import TinyvimError
from tinyvim.export.onnx_export import op_counts
from tinyvim.interrupt import unwind_on_termination
from tinyvim.lazy import import_optional, lazy_import
from tinyvim.tools.inputs import (
    DEFAULT_CROP_PCT,
    check_crop_pct,
    iter_image_batches,
    iter_random_batches,
    list_images,
)
from tinyvim.utils import atomic_output, check_output_paths, file_sha256, scratch_directory, temporaries_in

np = lazy_import("numpy")
onnx = lazy_import("onnx")

#: ops whose weight input is quantized (TensorRT's "weighted operations")
QUANTIZED_OP_TYPES = ("Conv", "MatMul", "Gemm")
#: largest float8e4m3fn value: an fp8 scale is amax / FP8_E4M3_MAX
FP8_E4M3_MAX = 448.0
#: the smallest opset with float8 QuantizeLinear / DequantizeLinear
FP8_MIN_OPSET = 19
#: batch of the calibration runs when the model's batch is dynamic
CALIBRATION_BATCH = 8
#: what ORT's quantizer writes into metadata_props; not ours to keep
_ORT_PROPS = ("onnx.infer", "onnx.quant.pre_process")
#: x86 /proc/cpuinfo flags of an 8-bit dot product that accumulates in 32 bits
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass
class QuantizeResult:
    path: Path
    metadata: ExportMetadata
    quantized: list[str]                    # node names, graph order
    kept_fp32: dict[str, str]               # node name -> why it was left in fp32 (weighted ops only)
    num_nodes: int
    op_counts: dict[str, int]
    seconds: dict[str, float]
    size_bytes: int
    warnings: list[str] = field(default_factory=list)


def cpu_has_vnni(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool | None:
    """Whether this x86 CPU has an int8 dot product with 32-bit sums (VNNI or AMX); None when
    it cannot be told (not Linux, not x86)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return None
    return any(f in flags for f in VNNI_FLAGS)


def saturation_warning(quant: QuantizationInfo | None) -> str | None:
    """The warning for int8 with 8-bit weights on an x86 CPU without VNNI (module docstring),
    None when it does not apply."""
    if quant is None or quant.scheme != "int8" or quant.weight_bits != 8 or cpu_has_vnni() is not False:
        return None
    return ("this CPU has no VNNI (an int8 dot product with 32-bit sums): ONNX Runtime's and OpenVINO's int8 kernels "
            "add pairs of 8-bit products in 16 bits here, which saturate with 8-bit weights; for CPUs like this one "
            "quantize with --reduce-range (7-bit weights); 8 bits suit TensorRT and VNNI/AMX CPUs")


# --------------------------------------------------------------------- which nodes
#: ops that only move or view data: a tensor reaching a scan through them is still the scan's operand
LAYOUT_OPS = ("Split", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Identity", "Flatten")
#: why placement "lean" keeps a scan-operand layer in fp32 (see select_nodes)
SCAN_OPERAND_REASON = ("computes the scan's operands (x_proj / dt_proj: tiny, and Q/DQ there sits on the "
                       "tensors that feed the scan)")


def scan_operands(graph: onnx.GraphProto) -> set[str]:
    """The tensors the SS2D scans read (x, delta, Bs, Cs): the inputs of the plugin nodes, and the
    inputs from outside of each portable lowering, whose nodes are all named '<the scan's
    output>/…' (tinyvim.export.scan_lowering). Initializers and constants are not operands."""
    operands: set[str] = set()
    constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant"
                                                       for o in n.output}
    outputs = {o for n in graph.node for o in n.output}
    lowered: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if (node.domain, node.op_type) == (SCAN_PLUGIN.onnx_domain, SCAN_PLUGIN.op_type):
            operands.update(node.input[:4])
            continue
        cuts = [i for i, c in enumerate(node.name) if c == "/" and node.name[:i] in outputs]
        if cuts:
            lowered.setdefault(node.name[:cuts[0]], []).append(node)
    for nodes in lowered.values():
        inside = {o for n in nodes for o in n.output}
        operands.update(i for n in nodes for i in n.input if i and i not in inside and i not in constants)
    return operands


def scan_operand_layers(graph: onnx.GraphProto, candidates: set[str]) -> tuple[set[str], set[str]]:
    """(the layers of `candidates` that compute a scan operand, the tensors on the way): walking back
    from each operand through LAYOUT_OPS and through such layers (delta = dt_proj(split(x_proj(x)))),
    and stopping at anything else."""
    producer = {o: n for n in graph.node for o in n.output}
    layers: set[str] = set()
    seen: set[str] = set()
    stack = list(scan_operands(graph))
    while stack:
        tensor = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        node = producer.get(tensor)
        if node is None:
            continue
        if node.name in candidates:
            layers.add(node.name)
        elif node.op_type not in LAYOUT_OPS:
            continue
        stack.append(node.input[0])
    return layers, seen


def check_placement(placement: str) -> None:
    if placement not in QDQ_PLACEMENTS:
        raise TinyvimError(f"unknown --placement {placement!r}: choose {' or '.join(QDQ_PLACEMENTS)}")


def select_nodes(graph: onnx.GraphProto, placement: str = DEFAULT_QDQ_PLACEMENT) -> tuple[list[str], dict[str, str]]:
    """(names of the nodes to quantize, {name: reason} for weighted nodes kept in fp32).

    Quantized: Conv / MatMul / Gemm of the default domain whose weight (input 1) is an
    initializer, i.e. the network's learned layers. Not even considered: the scan's
    activation x activation MatMuls and every other op. Kept in fp32, with the reason: a node
    fed by a Concat (module docstring), a node without a name (the quantizer addresses nodes
    by name), and with placement "lean" the layers that compute the scan's operands: each SS2D's
    x_proj (the 1x1 conv giving dt, B and C from the scan's x) and dt_proj (dt -> delta), found
    by walking back from the scan's operands (scan_operand_layers), for either scan flavour. They
    run on the pooled 7x7 map (0.3 % of TinyViM-S's weighted MACs at 224), so int8 saves nothing
    there, while their Q/DQ sits on the scan's x (which the scan and the pyramid residual read in
    fp32 too) and on a Split output: tensors OpenVINO quantizes in a FakeQuantize layer of its
    own, and rounding that reaches the scan's inputs."""
    check_placement(placement)
    initializers = {i.name for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    weighted = [n for n in graph.node if n.domain in ("", "ai.onnx") and n.op_type in QUANTIZED_OP_TYPES
                and len(n.input) >= 2 and n.input[1] in initializers]
    # activation x activation (the scan's contractions) is not a learned layer: not in `weighted`
    operand_layers = scan_operand_layers(graph, {n.name for n in weighted if n.name})[0] \
        if placement == "lean" else set()
    chosen: list[str] = []
    kept: dict[str, str] = {}
    for node in weighted:
        source = producer.get(node.input[0])
        if not node.name:
            kept[f"<unnamed {node.op_type} reading {node.input[0]}>"] = "the node has no name"
        elif source is not None and source.op_type == "Concat":
            kept[node.name] = ("input comes from a Concat (OpenVINO's CPU plugin miscomputes Concat -> Q/DQ -> "
                               "Conv)")
        elif node.name in operand_layers:
            kept[node.name] = SCAN_OPERAND_REASON
        elif node.op_type == "Gemm" and not _gemm_plain(node):
            kept[node.name] = "Gemm with transA or alpha/beta != 1"
        else:
            chosen.append(node.name)
    if len(set(chosen)) != len(chosen):
        raise TinyvimError("the ONNX graph has duplicate node names: re-export it with `tinyvim export`")
    return chosen, kept


def _gemm_plain(node: onnx.NodeProto) -> bool:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return not attrs.get("transA", 0) and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0


def activation_inputs(graph: onnx.GraphProto, nodes: list[str]) -> list[str]:
    """The activation tensors (input 0) of `nodes`, each once, in graph order."""
    wanted = set(nodes)
    seen: dict[str, None] = {}
    for node in graph.node:
        if node.name in wanted:
            seen.setdefault(node.input[0], None)
    return list(seen)


# --------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class CalibrationSet:
    """Where the calibration images come from: a folder of pictures or seeded random images."""
    source: str                     # "images" | "random"
    samples: int                    # images used
    batch: int
    size: tuple[int, int]
    seed: int | None = None
    files: tuple[Path, ...] = ()
    crop_pct: float = DEFAULT_CROP_PCT

    def batches(self) -> Iterator[np.ndarray]:
        if self.source == "images":
            yield from iter_image_batches(list(self.files), self.batch, self.size, self.crop_pct, flag="--calib")
        else:
            yield from iter_random_batches(-(-self.samples // self.batch), self.batch, self.size, self.seed or 0)

    def describe(self) -> str:
        if self.source == "images":
            return f"{self.samples} picture(s) from {self.files[0].parent}" if self.files else "no pictures"
        return f"{self.samples} random image(s) (seed {self.seed})"


@dataclass(frozen=True)
class CalibrationRequest:
    """What `tinyvim quantize` calibrates on and how, checked when built: exactly one of
    `calib_dir` (at most `max_images` pictures, ImageNet preprocessing with `crop_pct`) and
    `calib_random` (that many random images from `calib_seed`); the range `method` (minmax, or
    the `percentile` of |x|); `size` for a dynamic-size export (None: the model's, else
    DEFAULT_IMG_SIZE)."""
    calib_dir: str | os.PathLike | None = None
    calib_random: int | None = None
    #: seeds the random calibration images (`quantize --seed`); not the weights
    calib_seed: int = 0
    max_images: int = 512
    crop_pct: float = DEFAULT_CROP_PCT
    size: tuple[int, int] | None = None
    method: str = "minmax"
    percentile: float | None = None
    #: hold every k-th --calib picture out of calibration (the accuracy budget measures on them); None: none
    holdout_every: int | None = None

    def __post_init__(self) -> None:
        if (self.calib_dir is None) == (self.calib_random is None):
            raise TinyvimError("give the calibration images with exactly one of --calib DIR (your pictures, "
                               "preprocessed like ImageNet evaluation) or --calib-random N (seeded random images)")
        if self.calib_dir is not None:
            check_count(self.max_images, "--calib-max", 1, MAX_CALIBRATION_SAMPLES)
        else:
            check_count(self.calib_random, "--calib-random", 1, MAX_CALIBRATION_SAMPLES)
            check_seed(self.calib_seed, "--seed (calibration seed)")
        check_crop_pct(self.crop_pct)
        if self.size is not None:
            check_input_size(*self.size)
        if self.method not in CALIBRATION_METHODS:
            raise TinyvimError(f"unknown --calib-method {self.method!r}: choose {' or '.join(CALIBRATION_METHODS)}")
        if self.method != "percentile" and self.percentile is not None:
            raise TinyvimError(f"--percentile applies to --calib-method percentile ({self.method} does not take one)")
        if self.method == "percentile":
            try:
                object.__setattr__(self, "percentile", check_percentile(
                    DEFAULT_PERCENTILE if self.percentile is None else self.percentile))
            except ValueError as exc:
                raise TinyvimError(f"--percentile: {exc}") from None
        if self.holdout_every is not None:
            if self.calib_dir is None:
                raise TinyvimError("an accuracy budget without labelled --data measures agreement on held-out --calib "
                                   "pictures: give --calib DIR (random images say nothing about accuracy) or --data DIR")
            check_count(self.holdout_every, "hold-out stride", 2)

    @property
    def method_name(self) -> str:
        """The metadata's method text: minmax or percentile-P."""
        return calibration_method_name(self.method, self.percentile)

    def calibration_set(self, batch: int, size: tuple[int, int]) -> CalibrationSet:
        """The images themselves, at the model's `batch` and `size` (the pictures listed now)."""
        check_workload(batch, size)
        if self.calib_dir is not None:
            files = self._split()[0]
            return CalibrationSet("images", len(files), batch, size, None, tuple(files), self.crop_pct)
        return CalibrationSet("random", int(self.calib_random), batch, size, int(self.calib_seed))

    def held_out_files(self) -> list[Path]:
        """The --calib pictures kept out of calibration (every `holdout_every`-th, by name order)."""
        return self._split()[1]

    def _split(self) -> tuple[list[Path], list[Path]]:
        """(calibration pictures, held-out pictures): picture i is held out when i % k == k - 1, a
        rule (not a draw) spread over the whole sorted folder; one-line error when either is empty."""
        files = list_images(self.calib_dir, 1, self.max_images, flag="--calib")
        k = self.holdout_every
        if not k:
            return files, []
        held = [f for i, f in enumerate(files) if i % k == k - 1]
        if not held:
            raise TinyvimError(f"--calib {self.calib_dir}: {len(files)} picture(s); the accuracy budget without --data "
                               f"holds out every {k}th picture to measure agreement and needs at least {k}: give more "
                               "pictures, or labelled --data")
        return [f for i, f in enumerate(files) if i % k != k - 1], held


#: progress(images done, images in the pass, seconds since the pass began, "pass k/2" or "") of a calibration pass
CalibrationProgress = Callable[[int, int, float, str], None]
#: bins of the |x| histogram behind a percentile range: the range is exact to max|x| / HISTOGRAM_BINS
HISTOGRAM_BINS = 4096


def collect_ranges(model: onnx.ModelProto, tensors: list[str], calib: CalibrationSet, *,
                   threads: int | None = None, percentile: float | None = None,
                   entropy: bool = False, progress: CalibrationProgress | None = None) -> dict[str, tuple[float, float]]:
    """(min, max) of each of `tensors` over the calibration set: the model, with those tensors
    as extra outputs, runs batch by batch through tinyvim's ORT runner (the plugin flavour's
    scan node through its CPU path); memory is that of one batch.

    With `percentile` (P in [90, 100)) a second pass over the same batches histograms |x| of each
    tensor over [0, max|x|] in HISTOGRAM_BINS bins, and the range becomes -a..a with a the upper
    edge of the bin holding the P-th percentile of |x| - the smallest |x| with P % of the values
    at or below it - so at most max|x| / HISTOGRAM_BINS above it (the activations are quantized
    symmetrically: only |x| matters).

    With entropy=True the same histogram gives -a..a with a the KL-optimal threshold
    (`entropy_threshold`, TensorRT's entropy calibration).

    progress(images done, images in the pass, seconds since the pass began, "pass k/2" or "")
    after every batch: a pass over a few hundred pictures takes seconds to minutes."""

    marked = onnx.ModelProto()
    marked.CopyFrom(model)
    outputs = {o.name for o in marked.graph.output}
    graph_inputs = {i.name for i in marked.graph.input}
    for name in tensors:
        if name not in outputs and name not in graph_inputs:
            marked.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    ranges: dict[str, list[float]] = {}
    runner = OrtRunner(marked.SerializeToString(), threads=threads, name="calibration")

    passes = 1 if percentile is None and not entropy else 2
    total = -(-calib.samples // calib.batch) * calib.batch          # the last batch is filled up

    def calibration_values(k: int) -> Iterator[dict[str, np.ndarray]]:
        began, done = time.perf_counter(), 0
        for batch in calib.batches():     # the same batches on every pass (pictures, or seeded)
            values = runner.infer({INPUT_NAME: batch})
            values[INPUT_NAME] = batch
            done += batch.shape[0]
            if progress is not None:
                progress(done, total, time.perf_counter() - began, f"pass {k}/{passes}" if passes > 1 else "")
            yield {name: np.asarray(values[name]) for name in tensors}

    with runner:
        for values in calibration_values(1):
            for name, v in values.items():
                if not np.all(np.isfinite(v)):
                    raise TinyvimError(f"calibration: tensor {name} has NaN/Inf values: the model or the images are "
                                       "broken (validate the fp32 export first)")
                lo, hi = float(v.min()), float(v.max())
                cur = ranges.setdefault(name, [lo, hi])
                cur[0], cur[1] = min(cur[0], lo), max(cur[1], hi)
        if percentile is None and not entropy:
            return {k: (v[0], v[1]) for k, v in ranges.items()}
        amax = {k: max(-v[0], v[1]) for k, v in ranges.items()}
        hist = {k: np.zeros(HISTOGRAM_BINS, np.int64) for k in ranges}
        for values in calibration_values(2):
            for name, v in values.items():
                if amax[name] > 0:
                    bins = np.minimum((np.abs(v).ravel() * (HISTOGRAM_BINS / amax[name])).astype(np.int64),
                                      HISTOGRAM_BINS - 1)
                    hist[name] += np.bincount(bins, minlength=HISTOGRAM_BINS)
    clipped = {}
    for name, counts in hist.items():
        if amax[name] == 0:
            clipped[name] = (0.0, 0.0)
            continue
        if entropy:
            a = entropy_threshold(counts) * amax[name] / HISTOGRAM_BINS
        else:
            cumulative = np.cumsum(counts)
            k = int(np.searchsorted(cumulative, percentile / 100.0 * cumulative[-1]))   # first bin reaching P %
            a = min((k + 1) * amax[name] / HISTOGRAM_BINS, amax[name])
        clipped[name] = (-a, a)
    return clipped


#: int8's positive levels: a |x| histogram is merged into this many bins to model quantization
QUANTIZED_BINS = 128
#: candidate thresholds are tried every ENTROPY_STRIDE bins (HISTOGRAM_BINS / 8 = 512 candidates)
ENTROPY_STRIDE = 8


def entropy_threshold(counts: np.ndarray, quantized_bins: int = QUANTIZED_BINS, stride: int = ENTROPY_STRIDE) -> int:
    """The number of histogram bins i (a threshold at the upper edge of bin i-1) whose int8 model
    loses the least information: for each candidate i from `quantized_bins` up, P is the first i
    bins with everything above folded into the last, Q is those i bins merged into
    `quantized_bins` groups and spread back uniformly over each group's non-empty bins, and the
    i with the smallest KL(P || Q) wins (ties: the smaller i). A candidate whose last bin is empty
    but receives the folded tail has P > 0 where Q = 0: KL is infinite, the candidate is passed
    over (the full range, i = len(counts), always has a finite KL)."""
    counts = np.asarray(counts, np.float64)
    n = len(counts)
    if n <= quantized_bins or counts.sum() == 0:
        return n
    tail = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])         # tail[i] = sum(counts[i:])
    best, best_kl = n, np.inf
    for i in [*range(quantized_bins, n, stride), n]:
        p = counts[:i].copy()
        p[-1] += tail[i]
        group = (np.arange(i) * quantized_bins) // i                      # bin -> its quantized group
        nonzero = counts[:i] > 0
        sums = np.bincount(group, weights=counts[:i], minlength=quantized_bins)
        filled = np.bincount(group, weights=nonzero.astype(np.float64), minlength=quantized_bins)
        q = np.where(nonzero, sums[group] / np.maximum(filled[group], 1), 0.0)
        p /= p.sum()
        q /= q.sum()
        mask = p > 0
        if np.any(q[mask] == 0):
            continue
        kl = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if kl < best_kl - 1e-12:
            best, best_kl = i, kl
    return best


# --------------------------------------------------------------------- the Q/DQ graph
def _ort_quantize(model: onnx.ModelProto, nodes: list[str], ranges: dict[str, tuple[float, float]], *,
                  reduce_range: bool) -> onnx.ModelProto:
    """ONNX Runtime's quantize_static with TensorRT-style options, fed our ranges through its
    calibration cache (so it runs no calibration of its own)."""
    install, what = "pip install 'onnxruntime>=1.32'", "ONNX Runtime's quantization tools"
    q = import_optional("onnxruntime.quantization", install, what=what)
    calibrate = import_optional("onnxruntime.quantization.calibrate", install, what=what)
    CalibrationMethod, QuantFormat, QuantType, quantize_static = (q.CalibrationMethod, q.QuantFormat, q.QuantType,
                                                                  q.quantize_static)
    TensorData, TensorsData, save_tensors_data = (calibrate.TensorData, calibrate.TensorsData,
                                                  calibrate.save_tensors_data)
    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise TinyvimError(f"onnxruntime {import_optional('onnxruntime').__version__} is too old for `tinyvim quantize` (its "
                           "quantize_static takes no calibration cache): pip install 'onnxruntime>=1.32'")
    data = TensorsData(CalibrationMethod.MinMax, {
        name: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
        for name, (lo, hi) in ranges.items()})
    options = {
        "ActivationSymmetric": True,            # zero point 0: TensorRT accepts symmetric Q/DQ only
        "WeightSymmetric": True,
        "QuantizeBias": False,                  # fp32 bias: TensorRT fuses it into the int8 kernel
        "DedicatedQDQPair": True,               # only the quantized node reads the Q/DQ output
        "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES),
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},     # weight (K, N): one scale per output column
    }
    # our scratch folder (removed on SIGTERM/SIGHUP as on Ctrl-C) also holds ORT's own ort.quant.* folders
    with unwind_on_termination(), scratch_directory("tinyvim-quantize-") as tmp, temporaries_in(tmp):
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(data, cache)
        out = Path(tmp) / "qdq.onnx"
        with _quiet_ort_quantizer():
            try:
                quantize_static(model, os.fspath(out), None, quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=list(QUANTIZED_OP_TYPES), per_channel=True,
                                reduce_range=reduce_range, activation_type=QuantType.QInt8,
                                weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                                calibrate_method=CalibrationMethod.MinMax, extra_options=options,
                                calibration_cache_path=os.fspath(cache))
            except Exception as exc:  # noqa: BLE001 - the quantizer raises many types; all mean "it failed"
                first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                raise TinyvimError(f"ONNX Runtime's quantizer failed: {first}") from exc
        qdq = onnx.load(os.fspath(out), format="protobuf")
    fp32_readers_back(qdq, nodes)
    return qdq


def fp32_readers_back(qdq: onnx.ModelProto, quantized: list[str]) -> int:
    """Give every node that is not in `quantized` the fp32 tensor back where ORT's quantizer
    rewired it to a DequantizeLinear output. (Its DedicatedQDQPair gives each *quantized*
    reader a pair of its own, but a tensor with one quantized reader is replaced for all of
    them: the residual adds and the SS2D's high-frequency branch would read rounded values.)
    Returns how many inputs were given back."""
    wanted = set(quantized)
    producer = {o: n for n in qdq.graph.node for o in n.output}
    restored = 0
    for node in qdq.graph.node:
        if node.name in wanted or node.op_type in _QDQ:
            continue
        for k, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[k] = q.input[0]
                restored += 1
    return restored


@contextlib.contextmanager
def _quiet_ort_quantizer():
    """quantize_static logs advice through the root logger ("consider pre-processing"): not ours."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def to_fp8(qdq: onnx.ModelProto, source: onnx.ModelProto, ranges: dict[str, tuple[float, float]]) -> onnx.ModelProto:
    """The int8 Q/DQ graph with float8e4m3fn instead: the same nodes; activation scales
    amax / 448 per tensor; weights re-quantized from the fp32 originals in `source` with
    amax / 448 per output channel (the DQ's axis); zero points fp8 zeros."""
    import ml_dtypes

    originals = {i.name: i for i in source.graph.initializer}
    inits = {i.name: i for i in qdq.graph.initializer}
    new: dict[str, onnx.TensorProto] = {}
    fp8 = ml_dtypes.float8_e4m3fn
    for node in qdq.graph.node:
        if node.op_type == "QuantizeLinear":
            tensor, scale, zero = node.input[0], node.input[1], node.input[2]
            lo, hi = ranges[tensor]
            amax = max(abs(lo), abs(hi), np.finfo(np.float32).tiny)
            new[scale] = onnx.numpy_helper.from_array(np.array(amax / FP8_E4M3_MAX, np.float32), scale)
            new[zero] = onnx.numpy_helper.from_array(np.zeros((), fp8), zero)      # saturate=1 is the default
        elif node.op_type == "DequantizeLinear" and node.input[0] in inits:       # a stored weight
            qname, scale, zero = node.input[0], node.input[1], node.input[2]
            weight_name = qname.removesuffix("_quantized")
            if weight_name not in originals:
                raise TinyvimError(f"internal: no fp32 original for the quantized weight {qname}")
            w = onnx.numpy_helper.to_array(originals[weight_name]).astype(np.float32)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % w.ndim
            reduce_axes = tuple(d for d in range(w.ndim) if d != axis)
            amax = np.maximum(np.abs(w).max(axis=reduce_axes), np.finfo(np.float32).tiny).astype(np.float32)
            scales = amax / np.float32(FP8_E4M3_MAX)
            shape = [1] * w.ndim
            shape[axis] = -1
            q = np.clip(w / scales.reshape(shape), -FP8_E4M3_MAX, FP8_E4M3_MAX).astype(fp8)
            new[qname] = onnx.numpy_helper.from_array(q, qname)
            new[scale] = onnx.numpy_helper.from_array(scales, scale)
            new[zero] = onnx.numpy_helper.from_array(np.zeros(amax.shape, fp8), zero)
    for i, init in enumerate(qdq.graph.initializer):
        if init.name in new:
            qdq.graph.initializer[i].CopyFrom(new[init.name])
    return qdq


_QDQ = ("QuantizeLinear", "DequantizeLinear")


def qdq_problems(qdq: onnx.ModelProto, source: onnx.ModelProto, quantized: list[str], dtype: str, *,
                 scan_operands_free: bool = False) -> list[str]:
    """What breaks the promises of the module docstring (empty when nothing): each node in
    `quantized` reads a DQ of a Q on input 0 and a DQ of a stored weight on input 1 (per
    channel along its output axis); every Q/DQ has a zero point of 0 of the right type; no
    DQ output reaches anything but the nodes in `quantized`; no other node changed, plugin
    nodes included; nothing else is quantized (no Q/DQ on outputs); with scan_operands_free,
    no Q reads a scan operand or a tensor it comes from through layout ops (placement "lean")."""
    want = onnx.TensorProto.INT8 if dtype == "int8" else onnx.TensorProto.FLOAT8E4M3FN
    inits = {i.name: i for i in qdq.graph.initializer}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in qdq.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    problems: list[str] = []
    wanted = set(quantized)
    by_name = {n.name: n for n in qdq.graph.node}
    for name in quantized:
        node = by_name.get(name)
        if node is None:
            problems.append(f"{name} is missing")
            continue
        act, wdq = producer.get(node.input[0]), producer.get(node.input[1])
        if act is None or act.op_type != "DequantizeLinear" or producer.get(act.input[0]) is None or \
                producer[act.input[0]].op_type != "QuantizeLinear":
            problems.append(f"{name}: input 0 is not read through QuantizeLinear -> DequantizeLinear")
        if wdq is None or wdq.op_type != "DequantizeLinear" or wdq.input[0] not in inits:
            problems.append(f"{name}: weight is not a stored quantized tensor behind a DequantizeLinear")
            continue
        w = inits[wdq.input[0]]
        scale = onnx.numpy_helper.to_array(inits[wdq.input[1]])
        axis = next((a.i for a in wdq.attribute if a.name == "axis"), 1) % len(w.dims)
        out_axis = _output_axis(node)
        if w.data_type != want:
            problems.append(f"{name}: weight stored as {onnx.TensorProto.DataType.Name(w.data_type)}, not {dtype}")
        if scale.ndim != 1 or scale.shape[0] != w.dims[out_axis] or axis != out_axis:
            problems.append(f"{name}: weight scales are not per output channel (axis {axis}, {scale.shape} scales)")
    for n in qdq.graph.node:
        if n.op_type not in _QDQ:
            continue
        zero = inits.get(n.input[2]) if len(n.input) > 2 else None
        if zero is None or zero.data_type != want or np.any(onnx.numpy_helper.to_array(zero).astype(np.float32) != 0):
            problems.append(f"{n.name}: zero point is not a {dtype} zero (symmetric quantization)")
        if n.op_type == "DequantizeLinear":
            readers = consumers.get(n.output[0], [])
            odd = [r.name for r in readers if r.name not in wanted]
            if odd or not readers:
                problems.append(f"{n.name}: its output reaches {odd or 'nothing'}, not only quantized layers")
    before = {n.name: n for n in source.graph.node}
    for n in qdq.graph.node:
        if n.op_type in _QDQ and n.domain in ("", "ai.onnx"):
            continue
        old = before.get(n.name)
        if old is None:
            problems.append(f"{n.name or n.op_type}: a node that the fp32 graph does not have")
        elif n.name not in wanted and n.SerializeToString() != old.SerializeToString():
            problems.append(f"{n.name}: changed although it is not quantized"
                            + (" (a plugin node)" if n.domain == SCAN_PLUGIN.onnx_domain else ""))
    if scan_operands_free:
        layers = {n.name for n in source.graph.node if n.op_type in QUANTIZED_OP_TYPES and n.name}
        operand_tensors = scan_operand_layers(source.graph, layers)[1]
        problems += [f"{n.name}: quantizes {n.input[0]}, which feeds the scan" for n in qdq.graph.node
                     if n.op_type == "QuantizeLinear" and n.input[0] in operand_tensors]
    return problems


def _output_axis(node: onnx.NodeProto) -> int:
    """The weight axis that indexes output channels: Conv (M, C, kH, kW) 0; MatMul (K, N) 1;
    Gemm 0 with transB, else 1."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
    return 1


# --------------------------------------------------------------------- the whole job
def quantize_onnx(model: str | os.PathLike, output: str | os.PathLike, calibration: CalibrationRequest, *,
                  dtype: Precision = INT8, reduce_range: bool = False, threads: int | None = None,
                  placement: str = DEFAULT_QDQ_PLACEMENT, log: Callable[[str], None] = lambda m: None,
                  progress: CalibrationProgress | None = None) -> QuantizeResult:
    """Quantize the fp32 TinyViM ONNX `model` into a Q/DQ ONNX at `output` (written
    atomically): int8 (or fp8) per the module docstring, calibrated as `calibration` says, the
    layers chosen by `placement` (select_nodes). metadata_props are kept, with `precision` set
    to `dtype` and `quantization` describing how. Every argument is checked before any work.
    progress: per calibration batch (`collect_ranges`)."""
    start = time.perf_counter()
    if dtype not in QUANTIZED_PRECISIONS:
        raise TinyvimError(f"unknown --dtype {dtype!r}: choose {' or '.join(QUANTIZED_PRECISIONS)}")
    check_placement(placement)
    check_threads(threads)
    check_output_paths({"-o": output}, inputs={"MODEL": model}, suffixes={"-o": (".onnx",)})
    info = read_onnx_info(model)
    meta = info.metadata
    if meta is None:
        raise TinyvimError(f"{model} carries no tinyvim metadata: quantize an ONNX written by `tinyvim export`")
    if meta.precision != FP32:
        raise TinyvimError(f"{model} is already {meta.precision}: quantize the fp32 export it came from "
                           "(`tinyvim export --precision fp32`)")
    if dtype == "fp8" and reduce_range:
        raise TinyvimError("--reduce-range is for int8 weights on CPUs without VNNI; fp8 has no such mode")
    percentile, method = calibration.percentile, calibration.method_name
    proto = onnx.load(os.fspath(model), format="protobuf")
    if any(n.op_type in _QDQ for n in proto.graph.node):
        raise TinyvimError(f"{model} already has QuantizeLinear/DequantizeLinear nodes: quantize the fp32 export")
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if dtype == "fp8" and opset < FP8_MIN_OPSET:
        raise TinyvimError(f"fp8 Q/DQ needs opset {FP8_MIN_OPSET} or newer and {model} has opset {opset}: "
                           f"re-export with --opset {max(FP8_MIN_OPSET, 20)}")
    size = info.fixed_size or (meta.input_size if meta.input_size else None)
    if calibration.size is not None:
        wanted = calibration.size
        if size is not None and wanted != size:
            raise TinyvimError(f"--img-size {wanted[0]}x{wanted[1]} does not match the model's input "
                               f"{size[0]}x{size[1]}")
        size = wanted
    size = size or DEFAULT_IMG_SIZE
    batch = info.fixed_batch or CALIBRATION_BATCH
    calib = calibration.calibration_set(batch, size)
    warnings = [w for w in [saturation_warning(QuantizationInfo(dtype, 7 if reduce_range else 8, calib.source,
                                                                 calib.samples, calib.seed))] if w]

    nodes, kept = select_nodes(proto.graph, placement)
    if not nodes:
        raise TinyvimError(f"{model} has no Conv/MatMul/Gemm with weights to quantize")
    tensors = activation_inputs(proto.graph, nodes)
    how = ("KL-optimal thresholds of |x|, two passes" if calibration.method == "entropy" else "max |x|"
           if percentile is None else f"the {percentile:g}th percentile of |x|, two passes")
    log(f"calibrating {len(tensors)} activation ranges ({how}) on {calib.describe()}, batch {batch}")
    t0 = time.perf_counter()
    ranges = collect_ranges(proto, tensors, calib, threads=threads, percentile=percentile,
                            entropy=calibration.method == "entropy", progress=progress)
    t1 = time.perf_counter()
    log(f"quantizing {len(nodes)} layers ({dtype}, per-channel weights"
        f"{', 7-bit' if reduce_range else ''}; {len(kept)} weighted layer(s) kept in fp32)")
    qdq = _ort_quantize(proto, nodes, ranges, reduce_range=reduce_range)
    if dtype == "fp8":
        qdq = to_fp8(qdq, proto, ranges)
    problems = qdq_problems(qdq, proto, nodes, dtype, scan_operands_free=placement == "lean")
    if problems:
        raise TinyvimError(f"internal: the quantized graph breaks its promises: {'; '.join(problems[:5])}"
                           + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""))
    quant = QuantizationInfo(scheme=dtype, weight_bits=7 if reduce_range else 8, calibration=calib.source,
                             samples=calib.samples, seed=calib.seed, method=method,
                             source_sha256=file_sha256(model), placement=placement)
    new_meta = replace(meta, precision=dtype, quantization=quant)
    _set_metadata(qdq, proto, new_meta)
    with atomic_output(output, suffix=".onnx") as tmp:
        onnx.save(qdq, os.fspath(tmp))
        try:
            onnx.checker.check_model(os.fspath(tmp), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise TinyvimError(f"internal: the quantized graph fails onnx.checker: "
                               f"{str(exc).splitlines()[0]}") from None
    path = Path(output)
    return QuantizeResult(path=path, metadata=new_meta, quantized=nodes, kept_fp32=kept,
                          num_nodes=len(qdq.graph.node), op_counts=op_counts(qdq),
                          seconds={"calibration": round(t1 - t0, 2), "total": round(time.perf_counter() - start, 2)},
                          size_bytes=path.stat().st_size, warnings=warnings)


def _set_metadata(qdq: onnx.ModelProto, source: onnx.ModelProto, meta: ExportMetadata) -> None:
    """The source's metadata_props, tinyvim's keys rewritten from `meta`, ORT's own dropped;
    producer kept as tinyvim."""
    ours = meta.to_props()
    others = [(p.key, p.value) for p in source.metadata_props if p.key not in ours and p.key not in _ORT_PROPS]
    del qdq.metadata_props[:]
    for key, value in list(ours.items()) + others:
        qdq.metadata_props.add(key=key, value=value)
    qdq.producer_name, qdq.producer_version = source.producer_name, source.producer_version


def quantization_report(result: QuantizeResult) -> dict:
    """The JSON document of `tinyvim quantize --json`."""
    return {"path": str(result.path), "size_bytes": result.size_bytes, "num_nodes": result.num_nodes,
            "op_counts": result.op_counts, "quantized": result.quantized, "kept_fp32": result.kept_fp32,
            "seconds": result.seconds, "warnings": result.warnings, "metadata": result.metadata.to_props()}

