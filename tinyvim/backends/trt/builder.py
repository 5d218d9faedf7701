"""Building a TensorRT engine from a TinyViM ONNX file (`tinyvim build-engine`).

The TensorRT work goes through Polygraphy's TensorRT loaders (NVIDIA tests them against every
TensorRT release): NetworkFromOnnxPath, PostprocessNetwork, CreateConfig (profile, precision,
precision constraints, timing cache, progress monitor), EngineBytesFromNetwork. What is ours:
the scan plugin registered through IPluginRegistry::loadLibrary before parsing, the precision
policy, the profile rules, the sidecar, atomic writes, progress lines, and the equivalent
trtexec / polygraphy command lines printed so that the build can be reproduced with those tools.

Pure logic first (profiles, precision policy, which layers stay in fp32, command lines): no
tensorrt import, unit-tested everywhere.

Precision policy:
- TensorRT 10.x, fp32 ONNX: weakly typed network; --precision fp16/bf16 set the builder flag,
  and the scan plugin, softplus and normalisation layers are pinned to fp32 (layer precision +
  output type, with precision constraints "obey"; found by layer type and, for the portable
  scan's elementary ops, by ONNX op type - see FP32_OP_TYPES) because the recurrence
  exp(delta*A)*h accumulates over the whole sequence and softplus/normalisation lose too much
  in 16 bits.
- TensorRT >= 11 (no FP16/BF16 builder flags) or an ONNX already exported in reduced precision:
  strongly typed network; the precision is the one written in the ONNX graph, so --precision
  must match the ONNX's `precision` metadata (export with `--precision fp16` for fp16).
- int8 / fp8 (explicit quantization): the ONNX must hold the Q/DQ nodes (`tinyvim quantize`;
  TensorRT 11 has no calibrator and no INT8 flag, and tinyvim calibrates on the CPU instead) and
  --precision must name its dtype. TensorRT 10.x: weakly typed with the INT8 (FP8) builder flag,
  which lets the Q/DQ nodes set the precision of the layers they wrap while every other layer
  (scan, softplus, normalisation) stays fp32; 11.x: strongly typed, precision from the graph.
- TF32 is off unless asked for (--tf32): TensorRT enables it by default, which puts ~1e-3
  relative error on every fp32 convolution and matrix product, and `validate`'s fp32
  tolerance assumes real fp32.
"""
from __future__ import annotations

import os
import re
import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from collections.abc import Callable


from tinyvim import __version__
from tinyvim.backends.model_file import read_onnx_info
from tinyvim.backends.trt.common import (
    check_plugin_file,
    check_trt_version,
    default_plugin_path,
    gpu_info,
    import_polygraphy,
    import_tensorrt,
    polygraphy_messages,
    register_plugin_library,
    trt_major,
)
from tinyvim.backends.trt.sidecar import EngineSidecar, sidecar_path
from tinyvim.contract import (
    BF16,
    FP8,
    FP16,
    FP32,
    INPUT_NAME,
    INT8,
    QUANTIZED_PRECISIONS,
    SCAN_PLUGIN,
    Precision,
    check_batch,
    check_input_size,
    format_size,
)
from tinyvim.contract import COMPUTE_PRECISIONS as PRECISIONS
from tinyvim.errors import TinyvimError
from tinyvim.utils import atomic_write_bytes, check_output_paths, file_sha256
from tinyvim.lazy import lazy_import

onnx = lazy_import("onnx")

if TYPE_CHECKING:   # annotations only; imported lazily where used
    import tensorrt as trt

AUTOREG_LIBRARY = "libtinyvim_trt_plugin_autoreg.so"
_SHAPE_KEYS = ("min", "opt", "max")


# --------------------------------------------------------------------- profiles
def parse_shape(text: str, what: str) -> tuple[int, int, int]:
    """'8x224x224' (batch x height x width) -> (8, 224, 224), each part checked."""
    parts = str(text).strip().lower().split("x")
    if len(parts) != 3 or not all(re.fullmatch(r"\d{1,6}", p) for p in parts):
        raise TinyvimError(f"{what} {text!r} is not BxHxW (batch x height x width, e.g. 1x224x224)")
    b, h, w = (int(p) for p in parts)
    check_batch(b, f"the batch of {what}")
    try:
        check_input_size(h, w)
    except TinyvimError as exc:     # name the option: "3x224" alone reads like a typo elsewhere
        raise TinyvimError(f"{what} {text}: {exc} (the shape is BxHxW: batch, height, width)") from None
    return b, h, w


def _fill(values: dict[str, object]) -> dict[str, object]:
    """min/opt/max with the missing ones filled: opt from max (else min), max from opt (else
    min), min from opt (else max)."""
    lo, opt, hi = (values.get(k) for k in _SHAPE_KEYS)
    opt = opt if opt is not None else (hi if hi is not None else lo)
    hi = hi if hi is not None else opt
    lo = lo if lo is not None else opt
    return {"min": lo, "opt": opt, "max": hi}


@dataclass(frozen=True)
class ProfileRequest:
    """Which inputs an engine takes, as asked: shapes ('BxHxW', e.g. --max-shape 8x224x224) or,
    for the ONNX's own fixed H x W, batches only; None where not given. Each value is checked
    when built (the rest needs the ONNX: profile_shapes)."""
    min_shape: str | None = None
    opt_shape: str | None = None
    max_shape: str | None = None
    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None

    def __post_init__(self) -> None:
        if self.shapes and self.batches:
            raise TinyvimError("give the profile either as --min/--opt/--max-shape BxHxW or as "
                               "--min/--opt/--max-batch (for the ONNX's own size), not both")
        for k, b in self.batches.items():
            check_batch(b, f"--{k}-batch")

    @property
    def shapes(self) -> dict[str, tuple[int, int, int]]:
        given = zip(_SHAPE_KEYS, (self.min_shape, self.opt_shape, self.max_shape))
        return {k: parse_shape(v, f"--{k}-shape") for k, v in given if v is not None}

    @property
    def batches(self) -> dict[str, int]:
        given = zip(_SHAPE_KEYS, (self.min_batch, self.opt_batch, self.max_batch))
        return {k: v for k, v in given if v is not None}


def profile_shapes(input_shape, request: ProfileRequest = ProfileRequest()) -> dict:
    """The optimisation profile {'images': {'min','opt','max': [B, 3, H, W]}} for an ONNX whose
    input is `input_shape` ([B, 3, H, W], None where the dimension is dynamic), as `request` asks.

    Missing ends are filled (opt from max, max from opt, min from opt; min batch 1). A fixed
    dimension of the ONNX admits only its own value; a dynamic H x W needs shapes."""
    fixed_b, _, fixed_h, fixed_w = (d if isinstance(d, int) and d > 0 else None for d in input_shape)
    shapes, batches = request.shapes, request.batches
    if shapes:
        dims = dict(shapes)
    else:
        if fixed_h is None or fixed_w is None:
            raise TinyvimError("the ONNX has a dynamic image size: give the range with --min-shape / --opt-shape / "
                               "--max-shape BxHxW (e.g. --min-shape 1x224x224 --max-shape 8x384x384)")
        if fixed_b is None and "min" not in batches:
            batches["min"] = 1
        dims = {k: (b, fixed_h, fixed_w) for k, b in batches.items()}
    if not dims:      # nothing asked: the ONNX's own (fixed) shape
        dims = {"min": (fixed_b or 1, fixed_h, fixed_w)}
    dims = _fill(dims)
    for k, (b, h, w) in dims.items():
        if fixed_b is not None and b != fixed_b:
            raise TinyvimError(f"the ONNX has a fixed batch of {fixed_b}; re-export with --dynamic-batch to "
                               f"build an engine for other batch sizes (the {k} profile asks for {b})")
        if fixed_h is not None and (h, w) != (fixed_h, fixed_w):
            raise TinyvimError(f"the ONNX has a fixed image size of {format_size((fixed_h, fixed_w))}; re-export "
                               f"with a dynamic size to build for others (the {k} profile asks for "
                               f"{format_size((h, w))})")
    if not all(dims["min"][i] <= dims["opt"][i] <= dims["max"][i] for i in range(3)):
        text = {k: "x".join(map(str, v)) for k, v in dims.items()}
        raise TinyvimError(f"profile shapes must satisfy min ({text['min']}) <= opt ({text['opt']}) <= "
                           f"max ({text['max']}) in batch, height and width")
    return {INPUT_NAME: {k: [b, 3, h, w] for k, (b, h, w) in dims.items()}}


# --------------------------------------------------------------------- precision
@dataclass(frozen=True)
class PrecisionPolicy:
    """How to build for a precision: network typing, builder precisions, fp32 pinning."""
    precision: str
    strongly_typed: bool
    fp16: bool = False
    bf16: bool = False
    int8: bool = False                     # 10.x explicit quantization: the Q/DQ nodes need the flag
    fp8: bool = False
    tf32: bool = False
    pin_fp32: bool = False                 # 10.x, weakly typed: pin the scan/softplus/norm layers
    notes: tuple[str, ...] = field(default_factory=tuple)

    def config_kwargs(self) -> dict:
        """Polygraphy CreateConfig arguments."""
        return {"tf32": self.tf32, FP16: self.fp16, BF16: self.bf16, INT8: self.int8, FP8: self.fp8,
                "precision_constraints": "obey" if self.pin_fp32 else None}


def _typed_graph_error(precision: str, onnx_precision: str, why: str) -> TinyvimError:
    return TinyvimError(f"--precision {precision} with an {onnx_precision} ONNX: {why}, so the precision is the one "
                        f"written in the ONNX graph; export it with `tinyvim export --precision {precision}` (keeps "
                        f"scan/softplus in fp32) or build with --precision {onnx_precision}")


def check_precision_for_file(precision: str, onnx_precision: str = FP32) -> None:
    """The --precision an ONNX exported in `onnx_precision` allows whatever TensorRT builds it:
    checked before TensorRT is needed (a machine without it hears of the mismatch first)."""
    if precision not in PRECISIONS:
        raise TinyvimError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    if precision in QUANTIZED_PRECISIONS or onnx_precision in QUANTIZED_PRECISIONS:
        # explicit quantization: the precision is in the ONNX's Q/DQ nodes (module docstring)
        if onnx_precision not in QUANTIZED_PRECISIONS:
            raise TinyvimError(f"--precision {precision} needs an ONNX with {precision} Q/DQ nodes (TensorRT's "
                               f"explicit quantization; TensorRT 11 has no calibrator): run `tinyvim quantize MODEL "
                               f"--dtype {precision} --calib DIR` and build from its output")
        if precision != onnx_precision:
            raise TinyvimError(f"this ONNX is quantized to {onnx_precision} (Q/DQ nodes): build it with --precision "
                               f"{onnx_precision}, or build the fp32 export it came from for --precision {precision}")
    elif onnx_precision != FP32 and precision != onnx_precision:
        raise _typed_graph_error(precision, onnx_precision, f"the ONNX was exported in {onnx_precision}")


def precision_policy(precision: str, trt_version: str, onnx_precision: str = FP32,
                     tf32: bool = False) -> PrecisionPolicy:
    """The build recipe for `precision` with TensorRT `trt_version` and an ONNX exported in
    `onnx_precision` (its metadata; fp32 when absent)."""
    check_precision_for_file(precision, onnx_precision)
    check_trt_version(trt_version)
    major = trt_major(trt_version)
    tf32_note = (("TF32 enabled (--tf32): fp32 layers may run on TF32 tensor cores (~1e-3 relative error)",)
                 if tf32 else ("TF32 disabled: fp32 layers compute in real fp32",))
    if precision in QUANTIZED_PRECISIONS:
        return _quantized_policy(precision, major, tf32, tf32_note)
    if onnx_precision != FP32 or major >= 11:
        # The graph's own types decide: the builder may not change them.
        if precision != onnx_precision:
            raise _typed_graph_error(precision, onnx_precision,
                                     f"TensorRT {trt_version} builds strongly typed networks only")
        return PrecisionPolicy(precision, strongly_typed=True, tf32=tf32,
                               notes=(f"strongly typed network: precision from the ONNX graph ({onnx_precision})",
                                      *tf32_note))
    if precision == FP32:
        return PrecisionPolicy(FP32, strongly_typed=False, tf32=tf32, notes=tf32_note)
    return PrecisionPolicy(precision, strongly_typed=False, fp16=precision == FP16, bf16=precision == BF16,
                           tf32=tf32, pin_fp32=True,
                           notes=(f"builder precision {precision}; scan plugin, softplus and normalisation pinned "
                                  "to fp32", *tf32_note))


def _quantized_policy(precision: str, major: int, tf32: bool, tf32_note: tuple[str, ...]) -> PrecisionPolicy:
    """Explicit quantization (the file's precision already checked to be `precision`)."""
    if major >= 11:
        return PrecisionPolicy(precision, strongly_typed=True, tf32=tf32,
                               notes=(f"strongly typed network: {precision} from the ONNX's Q/DQ nodes, every other "
                                      "layer fp32", *tf32_note))
    return PrecisionPolicy(precision, strongly_typed=False, int8=precision == INT8, fp8=precision == FP8,
                           tf32=tf32, notes=(f"builder flag {precision.upper()}: the Q/DQ nodes set the {precision} "
                                             "layers, every other layer stays fp32", *tf32_note))


_PIN_NAME = re.compile(r"crossselectivescan|selective_scan|cross_selective|softplus|layernorm|layer_norm|out_norm",
                       re.IGNORECASE)
_PIN_KINDS = {"PLUGIN", "PLUGIN_V2", "PLUGIN_V3", "NORMALIZATION"}
#: ONNX ops kept in fp32 under an fp16/bf16 builder flag. The dynamo exporter names nodes
#: generically (node_exp, n3, ...), so the portable scan's exp(delta*A), the stable softplus
#: (relu + log1p(exp(-|x|))) and the decomposed LayerNorm (ReduceMean, Sqrt, Reciprocal) are
#: found by op type, not by name. Only SS2D uses these ops (plus the head's one ReduceMean),
#: so convolutions and GELUs - nearly all the time - still run in reduced precision.
FP32_OP_TYPES = frozenset({SCAN_PLUGIN.op_type, "Softplus", "Exp", "Log", "LayerNormalization", "ReduceMean",
                           "ReduceSum", "Sqrt", "Reciprocal", "Pow", "CumSum"})
_ONNX_LAYER = re.compile(r"ONNX Layer:\s*([^\]]+)\]")


def fp32_node_names(graph) -> frozenset[str]:
    """Names of the nodes of an onnx GraphProto whose op type is in FP32_OP_TYPES."""
    return frozenset(n.name for n in graph.node if n.op_type in FP32_OP_TYPES and n.name)


def should_pin_fp32(layer_name: str, layer_kind: str, activation_kind: str | None = None,
                    layer_metadata: str = "", fp32_nodes: frozenset[str] = frozenset()) -> bool:
    """Whether a layer must compute in fp32 under an fp16/bf16 builder flag.

    layer_kind: TensorRT LayerType name (e.g. 'PLUGIN_V3', 'NORMALIZATION', 'ACTIVATION');
    activation_kind: ActivationType name for activation layers (e.g. 'SOFTPLUS');
    layer_metadata: ILayer.metadata, where TensorRT's ONNX parser writes '[ONNX Layer: <node>]';
    fp32_nodes: `fp32_node_names` of the parsed graph (the parser names layers after nodes)."""
    if layer_kind in _PIN_KINDS:
        return True
    if layer_kind == "ACTIVATION" and activation_kind == "SOFTPLUS":
        return True
    if layer_name in fp32_nodes or any(m.strip() in fp32_nodes for m in _ONNX_LAYER.findall(layer_metadata or "")):
        return True
    return bool(_PIN_NAME.search(layer_name or ""))


def pin_fp32_layers(trt, network: trt.INetworkDefinition, fp32_nodes: frozenset[str]) -> list[str]:
    """TensorRT 10.x only (per-layer precision is gone in 11, where networks are strongly
    typed): pin the layers `should_pin_fp32` picks to fp32 compute and fp32 outputs. Returns
    their names, in network order."""
    if trt_major(trt.__version__) >= 11:   # the version guard the API test looks for
        raise TinyvimError(f"internal: TensorRT {trt.__version__} has no per-layer precision; build strongly typed")
    pinned = []
    for i in range(network.num_layers):
        layer: trt.ILayer = network.get_layer(i)
        kind = layer.type.name
        act = None
        if kind == "ACTIVATION":
            # ILayer.type is shadowed by IActivationLayer.type (the ActivationType) once the
            # layer is viewed as what it is.
            layer.__class__ = trt.IActivationLayer
            act = layer.type.name
        if should_pin_fp32(layer.name, kind, act, layer.metadata or "", fp32_nodes):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned.append(layer.name)
    return pinned


# --------------------------------------------------------------------- the same build with NVIDIA's tools
def equivalent_commands(onnx_path, engine_path, *, policy: PrecisionPolicy, profile: dict, static_input: bool,
                        plugin: str | None, pinned: list[str], trt_version: str, workspace_mib: int | None = None,
                        timing_cache=None, builder_optimization_level: int | None = None) -> dict[str, str]:
    """The trtexec and `polygraphy convert` command lines that build the same engine.

    trtexec loads the plugin through IPluginRegistry::loadLibrary (--dynamicPlugins), as tinyvim
    does; polygraphy's --plugins only dlopens, so it gets the self-registering companion library.
    Polygraphy's command line sets pinned layers' compute precision only; trtexec also their
    output types, as tinyvim does."""
    trtexec = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}", "--skipInference"]
    poly = ["polygraphy", "convert", os.fspath(onnx_path), "--convert-to", "trt", "-o", os.fspath(engine_path)]
    if plugin:
        trtexec.append(f"--dynamicPlugins={plugin}")
        poly += ["--plugins", os.fspath(Path(plugin).with_name(AUTOREG_LIBRARY))]
    if not static_input:
        for key, flag in zip(_SHAPE_KEYS, ("min", "opt", "max")):
            shapes = {name: s[key] for name, s in profile.items()}
            trtexec.append(f"--{flag}Shapes=" + ",".join(f"{n}:{'x'.join(map(str, s))}" for n, s in shapes.items()))
            poly += [f"--trt-{flag}-shapes", *(f"{n}:[{','.join(map(str, s))}]" for n, s in shapes.items())]
    if policy.strongly_typed:
        if trt_major(trt_version) < 11:   # 11 builds strongly typed networks only; the flag is gone
            trtexec.append("--stronglyTyped")
        poly.append("--strongly-typed")
    for flag in (FP16, BF16, INT8, FP8):
        if getattr(policy, flag):
            trtexec.append(f"--{flag}")
            poly.append(f"--{flag}")
    if policy.tf32:
        poly.append("--tf32")
    else:
        trtexec.append("--noTF32")      # polygraphy leaves TF32 off unless --tf32
    if pinned:
        trtexec += ["--precisionConstraints=obey", "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in pinned),
                    "--layerOutputTypes=" + ",".join(f"{n}:fp32" for n in pinned)]
        poly += ["--precision-constraints", "obey", "--layer-precisions", *(f"{n}:float32" for n in pinned)]
    if workspace_mib:
        trtexec.append(f"--memPoolSize=workspace:{int(workspace_mib)}M")
        poly += ["--pool-limit", f"workspace:{int(workspace_mib)}M"]
    if builder_optimization_level is not None:
        trtexec.append(f"--builderOptimizationLevel={int(builder_optimization_level)}")
        poly += ["--builder-optimization-level", str(int(builder_optimization_level))]
    if timing_cache is not None:
        trtexec.append(f"--timingCacheFile={timing_cache}")
        poly += ["--load-timing-cache", os.fspath(timing_cache), "--save-timing-cache", os.fspath(timing_cache)]
    return {"trtexec": shlex.join(map(str, trtexec)), "polygraphy": shlex.join(map(str, poly))}


def default_engine_path(onnx_path: str | os.PathLike, precision: str) -> Path:
    """`model.onnx` -> `model.fp16.engine` next to it (`model.int8.onnx` -> `model.int8.engine`)."""
    p = Path(onnx_path)
    stem = p.stem.removesuffix(f".{precision}")
    return p.with_name(f"{stem}.{precision}.engine")


def explain_parser_errors(errors: list[str]) -> str:
    """One message for ONNX-parser errors, with the fix for the common plugin case."""
    text = "; ".join(e.strip() for e in errors if e.strip()) or "unknown parser error"
    if re.search(r"plugin not found|No importer registered|getPluginCreator|" + re.escape(SCAN_PLUGIN.op_type) +
                 r"|Could not create the plugin", text, re.I):
        return (f"TensorRT could not parse the ONNX: {text}. The graph uses the {SCAN_PLUGIN.op_type} plugin: "
                "build it with `tinyvim build-plugin --tensorrt-root <TensorRT prefix>` and pass its library with "
                "--plugin PATH, or export with --scan portable")
    return f"TensorRT could not parse the ONNX: {text}"


# --------------------------------------------------------------------- TensorRT work
@dataclass
class BuildResult:
    engine_path: Path
    sidecar_path: Path
    sidecar: EngineSidecar
    seconds: float
    commands: dict[str, str]


def _make_progress_monitor(trt, log: Callable[[str], None]):
    """An IProgressMonitor printing the top-level build phases."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()  # TensorRT may call from several threads

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:
                with self._lock:
                    log(f"[build] {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True  # never cancel

        def phase_finish(self, phase_name):
            pass

    return Monitor()


def build_engine(onnx_path: str | os.PathLike, output: str | os.PathLike | None = None, *,
                 precision: Precision = FP32, shapes: ProfileRequest = ProfileRequest(),
                 workspace_mib: int | None = None,
                 timing_cache: str | os.PathLike | None = None, plugin: str | os.PathLike | None = None,
                 builder_optimization_level: int | None = None, tf32: bool = False,
                 log: Callable[[str], None] = print) -> BuildResult:
    """Parse `onnx_path`, build a serialized engine for the inputs `shapes` asks (its optimisation
    profile), write it atomically plus `<engine>.json`."""
    info = read_onnx_info(onnx_path)          # one-line errors for missing / foreign files first
    profile = profile_shapes(info.input_shape, shapes)
    out = Path(output) if output is not None else default_engine_path(onnx_path, precision)
    # every file this build writes, checked before minutes of building (and before TensorRT is needed)
    check_output_paths({"-o": out, "sidecar": sidecar_path(out), "--timing-cache": timing_cache},
                       inputs={"MODEL": onnx_path})
    check_precision_for_file(precision, info.precision)
    if plugin is not None or info.plugin_nodes:        # the plugin library too, before TensorRT is needed
        plugin = check_plugin_file(plugin if plugin is not None else default_plugin_path())
    trt = import_tensorrt()
    poly = import_polygraphy()
    from polygraphy.exception import PolygraphyException
    gpu = gpu_info()
    policy = precision_policy(precision, trt.__version__, info.precision, tf32=tf32)

    plugin_path = None
    if info.plugin_nodes or plugin is not None:
        # Before the parser looks for the CrossSelectiveScan creator.
        plugin_path = register_plugin_library(trt, plugin)
        log(f"[build] scan plugin registered from {plugin_path}")

    pinned: list[str] = []
    with polygraphy_messages(log) as errors:
        try:
            network = poly.NetworkFromOnnxPath(os.fspath(onnx_path), strongly_typed=policy.strongly_typed)
            if policy.pin_fp32:
                fp32_nodes = fp32_node_names(onnx.load(os.fspath(onnx_path), format="protobuf", load_external_data=False).graph)
                network = poly.PostprocessNetwork(
                    network, lambda network: pinned.extend(pin_fp32_layers(trt, network, fp32_nodes)),
                    name="tinyvim: pin scan, softplus and normalisation to fp32")
            builder, net, parser = network()       # parsed now: a parse error costs no build time
        except PolygraphyException:
            raise TinyvimError(explain_parser_errors(errors)) from None
        if policy.pin_fp32:
            log(f"[build] {len(pinned)} layers pinned to fp32")
        commands = equivalent_commands(
            onnx_path, out, policy=policy, profile=profile, static_input=all(
                isinstance(d, int) and d > 0 for d in info.input_shape), plugin=plugin_path, pinned=pinned,
            trt_version=trt.__version__, workspace_mib=workspace_mib, timing_cache=timing_cache,
            builder_optimization_level=builder_optimization_level)
        for tool, line in commands.items():
            log(f"[build] same build with {tool}: {line}")
        for note in policy.notes:
            log(f"[build] {note}")
        cache_exists = timing_cache is not None and Path(timing_cache).is_file()
        create_config = poly.CreateConfig(
            profiles=[poly.Profile().add(name, s["min"], s["opt"], s["max"]) for name, s in profile.items()],
            memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(workspace_mib) << 20} if workspace_mib else None,
            load_timing_cache=os.fspath(timing_cache) if cache_exists else None,
            builder_optimization_level=builder_optimization_level,
            progress_monitor=_make_progress_monitor(trt, log), **policy.config_kwargs())
        start = time.perf_counter()
        try:
            config: trt.IBuilderConfig = create_config(builder, net)
            serialized = poly.EngineBytesFromNetwork((builder, net, parser), config=config)()
        except PolygraphyException as exc:
            detail = "; ".join(errors) or str(exc)
            raise TinyvimError(f"TensorRT failed to build the engine: {detail}") from None
        seconds = time.perf_counter() - start

    atomic_write_bytes(out, bytes(serialized))
    if timing_cache is not None:   # the loaded cache plus this build's timings
        cache: trt.ITimingCache = config.get_timing_cache()
        atomic_write_bytes(timing_cache, bytes(cache.serialize()))
    # the ONNX path is absolute: per-block rebuilds from it, from wherever validate runs
    sidecar = EngineSidecar(tinyvim_version=__version__, tensorrt_version=trt.__version__, gpu_name=gpu["name"],
                            compute_capability=gpu["compute_capability"], precision=precision,
                            strongly_typed=policy.strongly_typed, profiles=[profile],
                            onnx_path=os.path.abspath(onnx_path), onnx_sha256=file_sha256(onnx_path),
                            onnx_metadata=info.metadata.to_props() if info.metadata else {}, plugin=plugin_path,
                            build_seconds=seconds, tf32=policy.tf32, commands=commands)
    side = sidecar.write(out)
    return BuildResult(out, side, sidecar, seconds, commands)
