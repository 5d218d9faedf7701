"""What two or more layers must agree on, declared once.

Every other module reads these names instead of spelling them again; the C++ plugin, which
cannot import Python, is checked against them by tests (tests/test_trt_contract.py,
tests/test_plugins_host_logic.py), and the
README's plugin table is rendered from them (`python -m tinyvim.contract`).

- Vocabularies: variants, scan flavours, precisions, ImageNet mean/std, the multiple-of-32
  rule, batch and size limits, the graph's input and output names.
- EXPORT_FORMATS: what `tinyvim export --fmt` writes, and the file kinds each is made of.
- SCAN_PLUGIN: the CrossSelectiveScan plugin - name, version, namespace, ONNX domain, each
  field with its ONNX attribute type and the PluginField type TensorRT's ONNX parser turns it
  into, each input/output with rank, symbolic shape and dtype rule.
- ExportMetadata: the typed `metadata_props` of every export (and of engine sidecars), with
  `to_props()` / `from_props()`; reading back validates every value (type, range) before
  anything trusts it.

This module imports nothing heavy (no torch, no onnx): every layer may depend on it.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields, replace
from typing import Literal
from collections.abc import Mapping

from tinyvim import __version__
from tinyvim.errors import TinyvimError

# --------------------------------------------------------------------- vocabularies
VARIANTS = ("s", "b", "l")
DEFAULT_VARIANT = "s"
SCAN_FLAVOURS = ("portable", "plugin")
PORTABLE_SCAN, PLUGIN_SCAN = SCAN_FLAVOURS
#: the scan flavour as a type: what an export was written with, carried to every reader
ScanFlavour = Literal["portable", "plugin"]
FP32, FP16, BF16, INT8, FP8 = "fp32", "fp16", "bf16", "int8", "fp8"
#: a precision as a type (the tuples below say which are allowed where)
Precision = Literal["fp32", "fp16", "bf16", "int8", "fp8"]
#: precisions an ONNX export can be written in
EXPORT_PRECISIONS = (FP32, FP16)
#: precisions `tinyvim quantize` writes into an fp32 export as Q/DQ nodes (explicit quantization)
QUANTIZED_PRECISIONS = (INT8, FP8)
#: precisions an ONNX file's metadata may name: exported, or quantized afterwards
MODEL_PRECISIONS = EXPORT_PRECISIONS + QUANTIZED_PRECISIONS
#: precisions a backend may compute in (TensorRT builder flags or the ONNX's Q/DQ nodes, OpenVINO
#: hints), loosest last
COMPUTE_PRECISIONS = (FP32, FP16, BF16) + QUANTIZED_PRECISIONS

#: model files by kind: the suffixes that name them (any other suffix is read as ONNX)
FILE_KINDS = {"onnx": (".onnx",), "openvino": (".xml",), "engine": (".engine", ".plan", ".trt"),
              # torch.export's ExportedProgram and an AOTInductor package are both .pt2 archives
              # (torch requires the suffix for either): the pt2 reader tells them apart by content
              "pt2": (".pt2",), "aoti": (".pt2",), "torchscript": (".torchscript",), "ort": (".ort",),
              "executorch": (".pte",)}
#: the tinyvim metadata (ExportMetadata.to_props() as a JSON object) inside a .pt2 / .torchscript
#: archive (an extra file), an AOTInductor package (its metadata) and a .pte (a constant method)
ARTIFACT_METADATA_NAME = "tinyvim_metadata.json"
ARTIFACT_METADATA_METHOD = "tinyvim_metadata"
#: `export --fmt ort --target-platform`: what ORT's converter optimizes the .ort for
ORT_TARGET_PLATFORMS = ("arm", "amd64")
#: beside a .ort: the operator list for an ONNX Runtime reduced-operator (mobile) build
ORT_REQUIRED_OPS_SUFFIX = ".required_operators.config"
#: how messages name each file kind ("x.xml is an OpenVINO IR", not "is OPENVINO")
FILE_KIND_NAMES = {"onnx": "an ONNX model", "openvino": "an OpenVINO IR", "engine": "a TensorRT engine",
                   "pt2": "a torch.export program", "aoti": "an AOTInductor package",
                   "torchscript": "a TorchScript module", "ort": "an ORT-format model",
                   "executorch": "an ExecuTorch program"}
#: an OpenVINO IR: the graph in .xml, its weights beside it in .bin (OpenVINO pairs them by name
#: alone), tinyvim's metadata under this rt_info key (the ONNX metadata_props keys and texts)
IR_SUFFIX, IR_WEIGHTS_SUFFIX, IR_RT_INFO_KEY = ".xml", ".bin", "tinyvim"
#: rt_info section of an IR holding CrossSelectiveScan nodes, naming the OpenVINO extension that
#: must be loaded before it is read: {"library": IR_EXTENSION_LIBRARY, "op": "tinyvim::CrossSelectiveScan"};
#: the op's IR "version" (its opset name) is the plugin namespace
IR_EXTENSION_RT_INFO_KEY, IR_EXTENSION_LIBRARY = "tinyvim_extension", "libtinyvim_ov_extension.so"
#: graph outputs added for `validate --per-block` are named TAP_PREFIX + the module's name
TAP_PREFIX = "tinyvim_tap__"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: stride-4 stem x three stride-2 downsamplers; the scan pools by 8 at stride 4.
INPUT_MULTIPLE = 32
#: how metadata and messages spell a dynamic dimension
DYNAMIC = "dynamic"
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: the image size every command defaults to (ImageNet classification)
DEFAULT_IMG_SIZE = (224, 224)
#: largest image side accepted anywhere (a 4096x4096 batch of 1 is 200 MB of float32 input).
MAX_IMAGE_SIDE = 4096
#: largest batch accepted anywhere (export, engine profiles, validate, profile).
MAX_BATCH = 4096
#: largest batch x H x W anywhere: 2^28 pixels, a 3 GiB float32 input (batch 4096 at 256x256,
#: batch 16 at 4096x4096); checked before anything of that size is allocated.
MAX_BATCH_PIXELS = MAX_BATCH * 256 * 256
#: intra-op threads accepted (torch and ONNX Runtime refuse <= 0; more than this is a typo)
MAX_THREADS = 1024
#: seeds are stored as non-negative 64-bit integers (numpy refuses negative seeds)
MAX_SEED = 2**63 - 1
#: iteration-like counts (--num-inputs, --iters, --warmup): an upper bound against typos
MAX_COUNT = 1_000_000
#: calibration images `tinyvim quantize` reads at most
MAX_CALIBRATION_SAMPLES = 100_000
#: where `tinyvim quantize` puts Q/DQ: "lean" on every weighted layer but those computing the
#: scan's operands (tinyvim.tools.quantize.select_nodes says why), "all" on every weighted layer
QDQ_PLACEMENTS = ("lean", "all")
DEFAULT_QDQ_PLACEMENT = "lean"
#: seconds per profiled configuration (--duration)
MAX_DURATION_S = 3600.0

MIN_OPSET = 18
DEFAULT_OPSET = 20          # torch 2.13's dynamo exporter default; has Gelu as one op

INPUT_NAME = "images"
CLASSIFIER_OUTPUTS = ("logits",)
BACKBONE_OUTPUTS = ("feat0", "feat1", "feat2", "feat3")


# --------------------------------------------------------------------- export formats and file kinds
@dataclass(frozen=True)
class ExportFormat:
    """One `tinyvim export --fmt` value: what -o names and what is written beside it."""
    name: str
    suffix: str                      # of the file -o names; "" when -o names a folder
    companions: tuple[str, ...]      # suffixes of the files written beside it under the same stem
    doc: str

    @property
    def is_folder(self) -> bool:
        return not self.suffix

    def files(self, output) -> tuple[str, ...]:
        """Every path an export to `output` writes: `output`, then its companions (same stem)."""
        text = str(output)
        stem = text[: len(text) - len(self.suffix)] if self.suffix and text.lower().endswith(self.suffix) else text
        return (text, *(stem + c for c in self.companions))


#: `export --fmt triton` writes a model repository folder, not a file
TRITON_FORMAT = "triton"
EXPORT_FORMATS = {f.name: f for f in (
    ExportFormat("onnx", ".onnx", (), "one ONNX file, weights inside"),
    ExportFormat("openvino", IR_SUFFIX, (IR_WEIGHTS_SUFFIX,),
                 "OpenVINO IR: the graph (.xml) and its weights (.bin, same stem)"),
    ExportFormat(TRITON_FORMAT, "", (), "a Triton Inference Server model repository folder"),
    ExportFormat("pt2", ".pt2", (), "a torch.export ExportedProgram (scan as standard aten ops; loads without "
                                    "tinyvim)"),
    ExportFormat("aoti", ".pt2", (), "an AOTInductor package (compiled C++ for this CPU; minutes to build)"),
    ExportFormat("torchscript", ".torchscript", (), "a traced TorchScript module (scan inlined; loads in libtorch "
                                                    "without tinyvim)"),
    ExportFormat("ort", ".ort", (ORT_REQUIRED_OPS_SUFFIX,),
                 "ONNX Runtime's mobile format from the portable ONNX, and the operator list of a reduced build"),
    ExportFormat("executorch", ".pte", (), "an ExecuTorch program, XNNPACK-delegated (needs tinyvim[executorch])"),
)}


# --------------------------------------------------------------------- Triton serving
#: Triton backends `export --fmt triton` writes a model repository for
TRITON_BACKENDS = ("python", "onnxruntime", "tensorrt")
#: what the python-backend model runs the portable ONNX with
TRITON_PYTHON_RUNTIMES = ("onnxruntime", "openvino")
TRITON_MODEL_NAME = "tinyvim"
#: tritonserver's own defaults; `serve` and `serve-bench` take them unless told otherwise
TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
#: config.pbtxt `parameters` the python-backend model file (tinyvim/serve/triton_models/
#: classifier.py, which cannot import tinyvim) reads; a test holds that file to these names
TRITON_PYTHON_PARAMS = {"runtime": "runtime", "onnx_file": "onnx_file", "threads": "intra_op_thread_count"}
TRITON_ONNX_FILE = "model.onnx"
TRITON_PLAN_FILE = "model.plan"


def output_names(backbone: bool) -> list[str]:
    """Graph output names: 'logits' for the classifier, feat0..feat3 for the backbone."""
    return list(BACKBONE_OUTPUTS if backbone else CLASSIFIER_OUTPUTS)


def check_variant(variant: str) -> str:
    """'S', 'tinyvim-s', 's' -> 's'; a one-line error otherwise."""
    key = str(variant).lower().removeprefix("tinyvim-").removeprefix("tinyvim_")
    if key not in VARIANTS:
        raise TinyvimError(f"unknown variant {variant!r}: choose {', '.join(VARIANTS)}")
    return key


def check_input_size(h: int, w: int) -> tuple[int, int]:
    """H and W positive multiples of 32 and at most MAX_IMAGE_SIDE; one-line error otherwise."""
    if h <= 0 or w <= 0 or h % INPUT_MULTIPLE or w % INPUT_MULTIPLE:
        raise TinyvimError(f"input size {h}x{w} is not divisible by {INPUT_MULTIPLE}: TinyViM downsamples by "
                           f"{INPUT_MULTIPLE} (e.g. use 224x224 or 256x256)")
    if max(h, w) > MAX_IMAGE_SIDE:
        raise TinyvimError(f"input size {h}x{w} is larger than {MAX_IMAGE_SIDE} on a side: "
                           f"use at most {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}")
    return h, w


def format_size(size: tuple[int, int]) -> str:
    """(224, 256) -> '224x256': how every command prints a size."""
    return f"{size[0]}x{size[1]}"


def parse_size(text: str | int) -> tuple[int, int]:
    """'224' or '224x256' (also '224,256') -> (H, W), checked with check_input_size."""
    parts = [p.strip() for p in str(text).lower().replace(",", "x").split("x")]
    if not all(re.fullmatch(r"[0-9]{1,6}", p) for p in parts) or len(parts) not in (1, 2):
        raise TinyvimError(f"image size {str(text)!r} is not N or HxW (e.g. 224 or 224x256)")
    size = tuple(int(p) for p in parts)
    if len(size) == 1:
        size = size * 2
    return check_input_size(*size)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_batch(batch: int, what: str = "--batch") -> int:
    """1 <= batch <= MAX_BATCH, with a one-line error naming the option."""
    if not _is_int(batch) or not 1 <= batch <= MAX_BATCH:
        raise TinyvimError(f"{what} must be an integer from 1 to {MAX_BATCH}, got {batch!r}")
    return batch


def check_workload(batch: int, size: tuple[int, int], what: str = "--batch") -> None:
    """batch x H x W within MAX_BATCH_PIXELS: a one-line error before an input that large is made."""
    pixels = int(batch) * int(size[0]) * int(size[1])
    if pixels > MAX_BATCH_PIXELS:
        most = max(1, MAX_BATCH_PIXELS // (int(size[0]) * int(size[1])))
        raise TinyvimError(f"{what} {batch} at {format_size(size)} is {pixels:,} pixels per call, above the limit of "
                           f"{MAX_BATCH_PIXELS:,} ({MAX_BATCH_PIXELS * 12 // 2**30} GiB of float32 input): use a batch "
                           f"of at most {most} at this size")


def check_count(value, what: str, minimum: int = 1, maximum: int = MAX_COUNT) -> int:
    """An integer option within [minimum, maximum], or a one-line error naming it."""
    if not _is_int(value) or not minimum <= value <= maximum:
        raise TinyvimError(f"{what} must be an integer from {minimum} to {maximum:,}, got {value!r}")
    return value


def check_threads(threads, what: str = "--threads") -> int | None:
    """None (all cores) or 1..MAX_THREADS."""
    return None if threads is None else check_count(threads, what, 1, MAX_THREADS)


def check_seed(seed, what: str = "--seed") -> int:
    return check_count(seed, what, 0, MAX_SEED)


def loosest_precision(*precisions: str | None) -> str:
    """The loosest of `precisions` (COMPUTE_PRECISIONS order, loosest last; None skipped): the
    tolerance a check uses when the file, the backend and the stored weights differ."""
    return max((p for p in precisions if p is not None), key=COMPUTE_PRECISIONS.index)


def check_choice(value, choices: tuple[str, ...], what: str) -> str:
    """`value` if it is one of `choices`, else a one-line error naming the option and the choices."""
    if value not in choices:
        raise TinyvimError(f"unknown {what} {value!r}: choose {' or '.join(choices)}")
    return value


def check_scan(scan) -> str:
    """A scan flavour (portable: standard ONNX ops; plugin: the TensorRT CrossSelectiveScan node)."""
    return check_choice(scan, SCAN_FLAVOURS, "--scan")


def check_export_precision(precision) -> str:
    """A precision an ONNX export can be written in (the one place this is checked)."""
    return check_choice(precision, EXPORT_PRECISIONS, "--precision")


# --------------------------------------------------------------------- which model, which input
@dataclass(frozen=True)
class ModelSpec:
    """Which model: the variant, its weights (a checkpoint, or random weights from `weight_seed`),
    and how to read them. Built once where a command starts (the CLI's model options, or an
    export's metadata) and passed whole to every layer below; it checks itself when built.

    checkpoint_sha256 is "" until known (export records it; validate compares it)."""
    variant: str = DEFAULT_VARIANT
    checkpoint: str | None = None
    checkpoint_sha256: str = ""
    ema: bool = False
    backbone: bool = False
    #: seeds the random weights when there is no checkpoint (`--seed` of export, `--init-seed` of validate)
    weight_seed: int = 0
    #: load a checkpoint whose weights hold NaN/Inf (refused by default)
    allow_nonfinite: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "variant", check_variant(self.variant))
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", os.fspath(self.checkpoint))
        if self.checkpoint_sha256 and not _SHA256.fullmatch(self.checkpoint_sha256):
            raise TinyvimError(f"checkpoint sha256 {self.checkpoint_sha256[:80]!r} is not 64 hex digits")
        for name in ("ema", "backbone", "allow_nonfinite"):
            if not isinstance(getattr(self, name), bool):
                raise TinyvimError(f"ModelSpec.{name} must be true or false, got {getattr(self, name)!r}")
        check_seed(self.weight_seed, "--seed (weight seed)")

    @property
    def random_weights(self) -> bool:
        return self.checkpoint is None

    def with_(self, **changes) -> ModelSpec:
        """A copy with `changes` (checked again)."""
        return replace(self, **changes)

    @classmethod
    def from_metadata(cls, meta: ExportMetadata, **overrides) -> ModelSpec:
        """The model an export was made from; `overrides` (not None) replace what it recorded."""
        values = dict(variant=meta.variant, checkpoint=meta.checkpoint or None,
                      checkpoint_sha256=meta.checkpoint_sha256,
                      ema=meta.ema, backbone=meta.backbone, weight_seed=meta.init_seed)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass(frozen=True)
class ModelOverrides:
    """What a caller says about the model of an existing file (validate, profile): each None
    means "as the file records" (tinyvim.tools.reference turns file + overrides into a ModelSpec)."""
    variant: str | None = None
    checkpoint: str | None = None
    ema: bool | None = None
    backbone: bool | None = None
    weight_seed: int | None = None
    allow_nonfinite: bool = False

    def __post_init__(self) -> None:
        if self.variant is not None:
            object.__setattr__(self, "variant", check_variant(self.variant))
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", os.fspath(self.checkpoint))
        if self.weight_seed is not None:
            check_seed(self.weight_seed, "--init-seed (weight seed)")


@dataclass(frozen=True)
class InputSpec:
    """Which input: the image size (H, W) and the batch, each None when dynamic. Checked when
    built: H and W multiples of INPUT_MULTIPLE up to MAX_IMAGE_SIDE, 1 <= batch <= MAX_BATCH,
    batch x H x W within MAX_BATCH_PIXELS."""
    size: tuple[int, int] | None = DEFAULT_IMG_SIZE
    batch: int | None = 1

    def __post_init__(self) -> None:
        if self.size is not None:
            if len(self.size) != 2 or not all(_is_int(v) for v in self.size):
                raise TinyvimError(f"input size {self.size!r} is not two integers (H, W)")
            object.__setattr__(self, "size", check_input_size(*self.size))
        if self.batch is not None:
            check_batch(self.batch)
        if self.size is not None and self.batch is not None:
            check_workload(self.batch, self.size)

    @property
    def dynamic_size(self) -> bool:
        return self.size is None

    @property
    def dynamic_batch(self) -> bool:
        return self.batch is None

    def with_(self, **changes) -> InputSpec:
        return replace(self, **changes)

    def describe(self) -> str:
        """'224x224, batch 1' / 'HxW dynamic, batch dynamic': how commands print it."""
        size = f"{DYNAMIC} HxW" if self.size is None else format_size(self.size)
        return f"{size}, batch {DYNAMIC if self.batch is None else self.batch}"

    @classmethod
    def from_metadata(cls, meta: ExportMetadata) -> InputSpec:
        return cls(size=meta.input_size, batch=meta.batch)


def check_positive_float(value, what: str, maximum: float, minimum_exclusive: float = 0.0) -> float:
    """A finite number in (minimum_exclusive, maximum]; NaN and inf are refused."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if isinstance(value, bool) or not math.isfinite(v) or not minimum_exclusive < v <= maximum:
        raise TinyvimError(f"{what} must be a finite number above {minimum_exclusive:g} and at most {maximum:g}, "
                           f"got {value!r}")
    return v


# --------------------------------------------------------------------- the scan plugin
@dataclass(frozen=True)
class PluginFieldSpec:
    """One plugin field: the ONNX node attribute and the PluginField TensorRT's ONNX parser
    makes of it (loadFields: INT -> kINT32, FLOAT -> kFLOAT32, STRING -> kCHAR)."""
    name: str
    onnx_type: str            # onnx.AttributeProto type name: INT, FLOAT, STRING
    trt_type: str             # nvinfer1::PluginFieldType enumerator
    length: int
    minimum: int
    maximum: int
    doc: str


@dataclass(frozen=True)
class PluginTensorSpec:
    """One input or output: symbolic dims, and the dtypes it may take. `same_dtype_as` ties its
    dtype to another tensor's (the plugin accepts any of `dtypes` for that one)."""
    name: str
    dims: tuple[str, ...]
    dtypes: tuple[str, ...]
    same_dtype_as: str | None
    doc: str

    @property
    def rank(self) -> int:
        return len(self.dims)


#: ONNX attribute type name -> the PluginFieldType the ONNX parser produces from it.
ONNX_TO_TRT_FIELD_TYPE = {"INT": "kINT32", "FLOAT": "kFLOAT32", "STRING": "kCHAR"}
#: nvinfer1::PluginFieldType enumerator values (NvInferRuntimePlugin.h / NvInferPluginBase.h).
TRT_FIELD_TYPE_VALUES = {"kFLOAT16": 0, "kFLOAT32": 1, "kFLOAT64": 2, "kINT8": 3, "kINT16": 4, "kINT32": 5,
                         "kCHAR": 6, "kDIMS": 7, "kUNKNOWN": 8, "kBF16": 9, "kINT64": 10, "kFP8": 11,
                         "kINT4": 12, "kFP4": 13}


@dataclass(frozen=True)
class PluginSpec:
    op_type: str              # ONNX op_type == TensorRT plugin name
    version: str              # node attribute plugin_version == creator's getPluginVersion()
    namespace: str            # node attribute plugin_namespace == creator's getPluginNamespace()
    onnx_domain: str          # the node's domain (TensorRT's parser ignores it; ORT needs one)
    onnx_domain_version: int
    fields: tuple[PluginFieldSpec, ...]
    inputs: tuple[PluginTensorSpec, ...]
    outputs: tuple[PluginTensorSpec, ...]

    def field(self, name: str) -> PluginFieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def node_attributes(self, **values: int) -> dict[str, object]:
        """The node's attributes: plugin_version, plugin_namespace, then every field, each
        value range-checked. Raises ValueError for a missing, unknown or out-of-range field."""
        unknown = set(values) - {f.name for f in self.fields}
        if unknown:
            raise ValueError(f"{self.op_type}: unknown field(s) {sorted(unknown)}")
        attrs: dict[str, object] = {"plugin_version": self.version, "plugin_namespace": self.namespace}
        for f in self.fields:
            if f.name not in values:
                raise ValueError(f"{self.op_type}: field {f.name} is required")
            v = values[f.name]
            if isinstance(v, bool) or not isinstance(v, int) or not f.minimum <= v <= f.maximum:
                raise ValueError(f"{self.op_type}: {f.name}={v!r} is outside {f.minimum}..{f.maximum}")
            attrs[f.name] = int(v)
        return attrs

    def bind_dims(self, shapes: Mapping[str, tuple[int, ...]], **fields_: int) -> dict[str, int]:
        """Check concrete input shapes against the symbolic dims (and the fields, e.g. d_state
        is N); returns the symbol values {'B':…, 'D':…, …}. Raises ValueError naming the input."""
        env: dict[str, int] = {"N": fields_["d_state"]} if "d_state" in fields_ else {}
        for t in self.inputs:
            shape = tuple(shapes[t.name])
            if len(shape) != t.rank:
                raise ValueError(f"{t.name} must have rank {t.rank} {t.dims}, got {shape}")
            for sym, d in zip(t.dims, shape):
                want = _eval_dim(sym, env)
                if want is None:
                    env[sym] = int(d)
                elif want != d:
                    raise ValueError(f"{t.name} must be {t.dims} = {tuple(_eval_dim(s, env) for s in t.dims)}, "
                                     f"got {shape}")
        return env

    def output_shape(self, env: Mapping[str, int], index: int = 0) -> tuple[int, ...]:
        return tuple(_eval_dim(s, env) for s in self.outputs[index].dims)  # type: ignore[misc]

    def markdown(self) -> str:
        """The plugin's contract as Markdown tables (the README section is this text)."""
        lines = [f"`{self.op_type}` — ONNX domain `{self.onnx_domain}`, attributes `plugin_version=\"{self.version}\"`, "
                 f"`plugin_namespace=\"{self.namespace}\"` (TensorRT finds the creator by op_type + these two).", "",
                 "| field | ONNX attribute | TensorRT PluginField | range | meaning |", "|---|---|---|---|---|"]
        for f in self.fields:
            lines.append(f"| `{f.name}` | {f.onnx_type} | {f.trt_type} × {f.length} | {f.minimum}..{f.maximum} | {f.doc} |")
        lines += ["", "| tensor | dims | dtypes | meaning |", "|---|---|---|---|"]
        for kind, tensors in (("in", self.inputs), ("out", self.outputs)):
            for t in tensors:
                dt = f"same as `{t.same_dtype_as}`" if t.same_dtype_as else ", ".join(t.dtypes)
                lines.append(f"| {kind} `{t.name}` | ({', '.join(t.dims)}) | {dt} | {t.doc} |")
        return "\n".join(lines)


def _eval_dim(sym: str, env: Mapping[str, int]) -> int | None:
    """'4' -> 4, 'D' -> env['D'], '4D' -> 4 * env['D']; None when the symbol is not bound yet."""
    m = re.fullmatch(r"(\d*)([A-Z]?)", sym)
    assert m, sym
    k, s = m.groups()
    if not s:
        return int(k)
    if s not in env:
        return None
    return int(k or 1) * env[s]


SCAN_DTYPES = ("float32", "float16", "bfloat16")

SCAN_PLUGIN = PluginSpec(
    op_type="CrossSelectiveScan",
    version="1",
    namespace="tinyvim",
    onnx_domain="tinyvim",
    onnx_domain_version=1,
    fields=(
        PluginFieldSpec("d_state", "INT", ONNX_TO_TRT_FIELD_TYPE["INT"], 1, 1, 16,
                        "N, the SSM state size; must equal dim 2 of Bs/Cs and dim 1 of A"),
    ),
    inputs=(
        PluginTensorSpec("x", ("B", "D", "H", "W"), SCAN_DTYPES, None, "low-frequency map fed to the scan (u)"),
        PluginTensorSpec("delta", ("B", "4D", "H", "W"), SCAN_DTYPES, "x", "raw dt per direction, before bias/softplus"),
        PluginTensorSpec("Bs", ("B", "4", "N", "H", "W"), SCAN_DTYPES, "x", "input projections per direction"),
        PluginTensorSpec("Cs", ("B", "4", "N", "H", "W"), SCAN_DTYPES, "x", "output projections per direction"),
        PluginTensorSpec("A", ("4D", "N"), ("float32",), None, "-exp(A_logs)"),
        PluginTensorSpec("Ds", ("4D",), ("float32",), None, "skip weights"),
        PluginTensorSpec("delta_bias", ("4D",), ("float32",), None, "dt bias"),
    ),
    outputs=(
        PluginTensorSpec("y", ("B", "D", "H", "W"), SCAN_DTYPES, "x", "sum of the four directions' outputs"),
    ),
)


# --------------------------------------------------------------------- export metadata
_MAX_TEXT = 4096


def _bool(key: str, text: str) -> bool:
    if text not in ("true", "false"):
        raise ValueError(f"expected true or false, got {text!r}")
    return text == "true"


def _int(key: str, text: str, lo: int, hi: int) -> int:
    if not re.fullmatch(r"-?[0-9]{1,20}", text):
        raise ValueError(f"expected an integer, got {text!r}")
    v = int(text)
    if not lo <= v <= hi:
        raise ValueError(f"{v} is outside {lo}..{hi}")
    return v


def _floats3(key: str, text: str, positive: bool) -> tuple[float, float, float]:
    try:
        values = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise ValueError(f"expected three comma-separated numbers, got {text!r}") from None
    if len(values) != 3 or not all(math.isfinite(v) for v in values) or (positive and min(values) <= 0):
        raise ValueError(f"expected three finite{' positive' if positive else ''} numbers, got {text!r}")
    return values  # type: ignore[return-value]


def _choice(key: str, text: str, choices: tuple[str, ...]) -> str:
    if text not in choices:
        raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
    return text


def _size(key: str, text: str) -> tuple[int, int] | None:
    if text == DYNAMIC:
        return None
    m = re.fullmatch(r"([0-9]{1,6})x([0-9]{1,6})", text)
    if not m:
        raise ValueError(f"expected HxW or {DYNAMIC}, got {text!r}")
    h, w = int(m.group(1)), int(m.group(2))
    if h % INPUT_MULTIPLE or w % INPUT_MULTIPLE or not 0 < max(h, w) <= MAX_IMAGE_SIDE or min(h, w) <= 0:
        raise ValueError(f"{text} is not two multiples of {INPUT_MULTIPLE} up to {MAX_IMAGE_SIDE}")
    return h, w


def _sha256(key: str, text: str) -> str:
    if text and not _SHA256.fullmatch(text):
        raise ValueError(f"expected 64 hex digits or nothing, got {text[:80]!r}")
    return text


def _text(key: str, text: str) -> str:
    if len(text) > _MAX_TEXT or any(ord(c) < 32 for c in text):
        raise ValueError("not a plain one-line text of at most 4096 characters")
    return text


#: how `tinyvim quantize` calibrates: the activation range is max |x| over the calibration set
#: (minmax), or the P-th percentile of |x| (percentile, written `percentile-P` in the metadata),
#: which clips rare outliers so the bulk of the values gets finer steps
CALIBRATION_SOURCES = ("images", "random")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_PERCENTILE = 99.99
#: percentiles accepted: below 90 clips far too much to be a calibration; 100 is minmax
PERCENTILE_RANGE = (90.0, 100.0)


def check_percentile(value: float) -> float:
    """A percentile in [90, 100), else ValueError naming the range."""
    lo, hi = PERCENTILE_RANGE
    if not (isinstance(value, (int, float)) and math.isfinite(value) and lo <= value < hi):
        raise ValueError(f"a percentile must be at least {lo:g} and below {hi:g} ({hi:g} is minmax), got {value}")
    return float(value)


def calibration_method_name(method: str, percentile: float | None = None) -> str:
    """The metadata's method text: 'minmax' or 'percentile-P'."""
    if method == "percentile":
        return f"percentile-{check_percentile(DEFAULT_PERCENTILE if percentile is None else percentile):g}"
    return _choice("method", method, CALIBRATION_METHODS)


def _method(key: str, text: str) -> str:
    name, sep, value = text.partition("-")
    if name == "percentile" and sep:
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"expected percentile-P with a number P, got {text!r}") from None
        return calibration_method_name("percentile", check_percentile(number))
    if text not in ("minmax", "entropy"):
        raise ValueError(f"expected minmax, entropy or percentile-P, got {text!r}")
    return text


_QUANT_KEYS = ("scheme", "weight_bits", "calibration", "samples", "seed", "method", "source_sha256", "placement")
#: files quantized before `--placement` existed carry no placement key; they were quantized "all"
_QUANT_KEYS_BEFORE_PLACEMENT = _QUANT_KEYS[:-1]


@dataclass(frozen=True)
class QuantizationInfo:
    """How a QDQ model was quantized (metadata key `quantization`, one line of key=value pairs):
    scheme int8 | fp8 (symmetric, per-tensor activations, per-channel weights); weight_bits 8,
    or 7 for CPUs without VNNI (see tinyvim.tools.quantize); the calibration set (images from
    a folder or seeded random images, how many, the seed); the range method (minmax or
    percentile-P); the sha256 of the fp32 ONNX it was made from; where Q/DQ went (QDQ_PLACEMENTS:
    lean leaves the scan's operands fp32, all quantizes every weighted layer)."""
    scheme: str
    weight_bits: int
    calibration: str
    samples: int
    seed: int | None
    method: str = "minmax"
    source_sha256: str = ""
    placement: str = "lean"

    def to_text(self) -> str:
        values = {"scheme": self.scheme, "weight_bits": str(self.weight_bits), "calibration": self.calibration,
                  "samples": str(self.samples), "seed": "" if self.seed is None else str(self.seed),
                  "method": self.method, "source_sha256": self.source_sha256, "placement": self.placement}
        return ";".join(f"{k}={values[k]}" for k in _QUANT_KEYS)

    @classmethod
    def from_text(cls, text: str) -> QuantizationInfo:
        """Parse and check every field (ValueError naming the first bad one)."""
        pairs = [p.partition("=") for p in text.split(";")]
        values = {k: v for k, sep, v in pairs if sep}
        well_formed = len(pairs) == len(values)      # no bare words, no key given twice
        if sorted(values) == sorted(_QUANT_KEYS_BEFORE_PLACEMENT):
            values["placement"] = "all"
        if not well_formed or sorted(values) != sorted(_QUANT_KEYS):
            raise ValueError(f"expected {';'.join(k + '=…' for k in _QUANT_KEYS)}, got {text[:200]!r}")
        scheme = _choice("scheme", values["scheme"], QUANTIZED_PRECISIONS)
        bits = _int("weight_bits", values["weight_bits"], 7, 8)
        if scheme == "fp8" and bits != 8:
            raise ValueError("fp8 weights have 8 bits")
        return cls(scheme=scheme, weight_bits=bits,
                   calibration=_choice("calibration", values["calibration"], CALIBRATION_SOURCES),
                   samples=_int("samples", values["samples"], 1, MAX_CALIBRATION_SAMPLES),
                   seed=None if values["seed"] == "" else _int("seed", values["seed"], 0, MAX_SEED),
                   method=_method("method", values["method"]),
                   source_sha256=_sha256("source_sha256", values["source_sha256"]),
                   placement=_choice("placement", values["placement"], QDQ_PLACEMENTS))


@dataclass(frozen=True)
class ExportMetadata:
    """The tinyvim `metadata_props` of an ONNX export (also kept in engine sidecars).

    input_size / batch are None when that dimension is dynamic."""
    variant: str
    backbone: bool = False
    ema: bool = False
    checkpoint: str = ""               # absolute path at export time, "" for random weights
    checkpoint_sha256: str = ""
    init_seed: int = 0                 # ModelSpec.weight_seed (the metadata key files carry)
    input_size: tuple[int, int] | None = DEFAULT_IMG_SIZE
    batch: int | None = 1
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    scan: ScanFlavour = PORTABLE_SCAN
    opset: int = DEFAULT_OPSET
    precision: Precision = FP32
    tinyvim_version: str = field(default="")
    # the precision the weights are stored in: the export's precision, or fp16 for an OpenVINO IR
    # written with --compress-to-fp16 (computed in fp32 from fp16-rounded weights, so it is
    # validated at the fp16 tolerance). None: the same as `precision`.
    weights: Precision | None = None

    def __post_init__(self) -> None:
        if self.weights is None:
            object.__setattr__(self, "weights", self.precision)

    #: set (and required) when precision is int8 / fp8: the model went through `tinyvim quantize`
    quantization: QuantizationInfo | None = None

    # key -> parser of its text (raises ValueError); the order is the order written
    _PARSERS = {
        "tinyvim_version": _text,
        "variant": lambda k, t: _choice(k, t, VARIANTS),
        "backbone": _bool,
        "ema": _bool,
        "checkpoint": _text,
        "checkpoint_sha256": _sha256,
        "init_seed": lambda k, t: _int(k, t, 0, 2**63 - 1),
        "input_size": _size,
        "batch": lambda k, t: None if t == DYNAMIC else _int(k, t, 1, MAX_BATCH),
        "mean": lambda k, t: _floats3(k, t, positive=False),
        "std": lambda k, t: _floats3(k, t, positive=True),
        "scan": lambda k, t: _choice(k, t, SCAN_FLAVOURS),
        "opset": lambda k, t: _int(k, t, MIN_OPSET, 99),
        "precision": lambda k, t: _choice(k, t, MODEL_PRECISIONS),
        "weights": lambda k, t: _choice(k, t, MODEL_PRECISIONS),
        "quantization": lambda k, t: QuantizationInfo.from_text(t),
    }
    #: keys that files written before them lack, and what such a file means by their absence
    _OPTIONAL = {"weights": lambda parsed: parsed["precision"], "quantization": lambda parsed: None}

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(cls._PARSERS)

    @classmethod
    def build(cls, model: ModelSpec, inputs: InputSpec, *, scan: ScanFlavour, precision: Precision,
              opset: int = DEFAULT_OPSET, weights: Precision | None = None,
              quantization: QuantizationInfo | None = None) -> ExportMetadata:
        """The metadata of an export of `model` at `inputs` (the one way exports make it). The
        checkpoint is recorded as an absolute path; its sha256 must already be in `model`. The
        specs checked themselves; scan, precision and opset are checked by the exporter before
        any work, and every value again when written (to_props reads its own text back)."""
        if model.checkpoint is not None and not model.checkpoint_sha256:
            raise ValueError("ExportMetadata.build needs the checkpoint's sha256 in the ModelSpec")
        return cls(variant=model.variant, backbone=model.backbone, ema=model.ema,
                   checkpoint=os.path.abspath(model.checkpoint) if model.checkpoint else "",
                   checkpoint_sha256=model.checkpoint_sha256, init_seed=model.weight_seed,
                   input_size=inputs.size, batch=inputs.batch, scan=scan, opset=int(opset),
                   precision=precision, tinyvim_version=__version__,
                   weights=weights, quantization=quantization)

    @property
    def model(self) -> ModelSpec:
        """The model this file was exported from."""
        return ModelSpec.from_metadata(self)

    @property
    def inputs(self) -> InputSpec:
        """The input this file was exported for (None fields: dynamic)."""
        return InputSpec.from_metadata(self)

    @property
    def dynamic_batch(self) -> bool:
        return self.batch is None

    @property
    def dynamic_size(self) -> bool:
        return self.input_size is None

    def to_props(self) -> dict[str, str]:
        """Every key as text, in a fixed order (what export writes into metadata_props)."""
        values = {
            "tinyvim_version": self.tinyvim_version or __version__,
            "variant": self.variant,
            "backbone": str(self.backbone).lower(),
            "ema": str(self.ema).lower(),
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
            "init_seed": str(self.init_seed),
            "input_size": DYNAMIC if self.input_size is None else format_size(self.input_size),
            "batch": DYNAMIC if self.batch is None else str(self.batch),
            "mean": ",".join(map(str, self.mean)),
            "std": ",".join(map(str, self.std)),
            "scan": self.scan,
            "opset": str(self.opset),
            "precision": self.precision,
            "weights": self.weights,
        }
        if self.quantization is not None:
            values["quantization"] = self.quantization.to_text()
        # Round-trip check: never write what from_props would refuse to read.
        ExportMetadata.from_props(values, source="(export metadata)")
        return values

    @classmethod
    def from_props(cls, props: Mapping[str, str], *, source: str) -> ExportMetadata | None:
        """Validated metadata from `props` (metadata_props as a dict), or None when the file
        carries no tinyvim metadata at all. Raises a one-line TinyvimError naming the key, the
        value and `source` when a key is missing or its value is malformed or out of range."""
        present = [k for k in cls._PARSERS if k in props]
        if not present:
            return None
        missing = [k for k in cls._PARSERS if k not in props and k not in cls._OPTIONAL]
        if missing:
            raise TinyvimError(f"{source}: tinyvim metadata is incomplete (missing {', '.join(missing)}): "
                               "re-export the model with `tinyvim export`")
        parsed = {}
        for key, parse in cls._PARSERS.items():
            if key not in props:          # an optional key (checked above)
                parsed[key] = cls._OPTIONAL[key](parsed)
                continue
            text = props[key]
            try:
                if not isinstance(text, str):
                    raise ValueError(f"expected text, got {type(text).__name__}")
                parsed[key] = parse(key, text)
            except ValueError as exc:
                raise TinyvimError(f"{source}: metadata {key!r} is invalid ({exc}): re-export the model "
                                   "with `tinyvim export`") from None
        if parsed["precision"] == "fp16" and parsed["weights"] != "fp16":
            raise TinyvimError(f"{source}: metadata 'weights' is invalid (an fp16 export stores fp16 weights, "
                               f"got {parsed['weights']!r}): re-export the model with `tinyvim export`")
        quant = parsed.get("quantization")
        if (parsed["precision"] in QUANTIZED_PRECISIONS) != (quant is not None) or (
                quant is not None and quant.scheme != parsed["precision"]):
            raise TinyvimError(f"{source}: metadata 'precision' ({parsed['precision']}) and 'quantization' "
                               f"({quant.scheme if quant else 'absent'}) disagree: re-quantize the fp32 export "
                               "with `tinyvim quantize`")
        if parsed["batch"] is not None and parsed["input_size"] is not None:
            try:
                check_workload(parsed["batch"], parsed["input_size"], what="batch")
            except TinyvimError as exc:
                raise TinyvimError(f"{source}: metadata is invalid ({exc}): re-export the model "
                                   "with `tinyvim export`") from None
        return cls(**parsed)


assert {f.name for f in fields(ExportMetadata)} == set(ExportMetadata.keys()), "metadata keys and fields differ"


if __name__ == "__main__":   # python -m tinyvim.contract: the README's plugin table
    print(SCAN_PLUGIN.markdown())
