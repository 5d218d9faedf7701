"""Building a TensorRT engine from a TinyViM ONNX file (`tinyvim build-engine`).

Pure logic first (profile shapes, precision policy per TensorRT major version, which layers
stay in fp32, output naming): no tensorrt import, unit-tested everywhere. `build_engine` does
the TensorRT work and imports tensorrt lazily.

Precision policy:
- TensorRT 10.x, fp32 ONNX: weakly typed network; --precision fp16/bf16 set the builder flag,
  and the scan plugin, softplus and LayerNorm layers are pinned to fp32 (layer precision +
  output type, with OBEY_PRECISION_CONSTRAINTS; found by layer type and, for the portable
  scan's elementary ops, by ONNX op type - see FP32_OP_TYPES) because the recurrence exp(delta*A)*h
  accumulates over 49 steps and softplus/normalisation lose too much in 16 bits. TF32 is
  cleared for fp32 so that "fp32" really means fp32 (TensorRT enables TF32 by default, which
  would put ~1e-3 relative error on every convolution).
- TensorRT >= 11 (no FP16/BF16 builder flags) or an ONNX already exported in reduced precision:
  strongly typed network; the precision is the one written in the ONNX graph, so --precision
  must match the ONNX's `precision` metadata (export with `--precision fp16` for fp16).
"""
from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tinyvim.contract import COMPUTE_PRECISIONS as PRECISIONS
from tinyvim.errors import TinyvimError
from tinyvim.utils import atomic_write_bytes


# --------------------------------------------------------------------- pure logic
def profile_shapes(img_size: tuple[int, int], min_batch: int = 1, opt_batch: int | None = None,
                   max_batch: int | None = None, fixed_batch: int | None = None) -> dict:
    """Optimisation profile for input `images`: {'images': {'min','opt','max': [B, 3, H, W]}}.

    opt defaults to max, max to opt (or min); an ONNX with a fixed batch allows only that batch."""
    if fixed_batch is not None:
        # min_batch's default (1) is not a request; any other asked batch must be the fixed one.
        asked = {b for b in (opt_batch, max_batch) if b is not None}
        if min_batch != 1:
            asked.add(min_batch)
        if asked - {fixed_batch}:
            raise TinyvimError(f"the ONNX has a fixed batch of {fixed_batch}; re-export with "
                               "--dynamic-batch to build an engine for other batch sizes")
        min_batch = opt_batch = max_batch = fixed_batch
    if max_batch is None:
        max_batch = opt_batch if opt_batch is not None else min_batch
    if opt_batch is None:
        opt_batch = max_batch
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise TinyvimError(f"batch sizes must satisfy 1 <= min ({min_batch}) <= opt ({opt_batch}) "
                           f"<= max ({max_batch})")
    h, w = img_size
    return {"images": {k: [b, 3, h, w] for k, b in (("min", min_batch), ("opt", opt_batch),
                                                     ("max", max_batch))}}


@dataclass(frozen=True)
class PrecisionPolicy:
    """How to build for a precision: builder flags to set / clear, typing, fp32 pinning."""
    precision: str
    strongly_typed: bool
    set_flags: tuple[str, ...] = ()
    clear_flags: tuple[str, ...] = ()
    pin_fp32: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)


def precision_policy(precision: str, trt_version: str, onnx_precision: str = "fp32") -> PrecisionPolicy:
    """The build recipe for `precision` with TensorRT `trt_version` and an ONNX exported in
    `onnx_precision` (its metadata; fp32 when absent)."""
    from tinyvim.engines.trt_common import check_trt_version, version_tuple

    if precision not in PRECISIONS:
        raise TinyvimError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    check_trt_version(trt_version)
    major = version_tuple(trt_version)[0]
    if onnx_precision != "fp32" or major >= 11:
        # The graph's own types decide: the builder may not change them.
        if precision != onnx_precision:
            why = (f"TensorRT {trt_version} builds strongly typed networks only"
                   if major >= 11 else f"the ONNX was exported in {onnx_precision}")
            raise TinyvimError(f"--precision {precision} with an {onnx_precision} ONNX: {why}, so the precision "
                               f"is the one written in the ONNX graph; export it with "
                               f"`tinyvim export --precision {precision}` (keeps scan/softplus in fp32) "
                               f"or build with --precision {onnx_precision}")
        return PrecisionPolicy(precision, strongly_typed=True,
                               notes=(f"strongly typed network: precision from the ONNX graph ({onnx_precision})",))
    if precision == "fp32":
        return PrecisionPolicy("fp32", strongly_typed=False, clear_flags=("TF32",),
                               notes=("TF32 disabled so that fp32 matches PyTorch to fp32 round-off",))
    flag = {"fp16": "FP16", "bf16": "BF16"}[precision]
    return PrecisionPolicy(precision, strongly_typed=False, set_flags=(flag, "OBEY_PRECISION_CONSTRAINTS"),
                           clear_flags=("TF32",), pin_fp32=True,
                           notes=(f"builder flag {flag}; scan plugin, softplus and LayerNorm pinned to fp32",))


_PIN_NAME = re.compile(r"crossselectivescan|selective_scan|cross_selective|softplus|layernorm|layer_norm|out_norm",
                       re.IGNORECASE)
_PIN_KINDS = {"PLUGIN", "PLUGIN_V2", "PLUGIN_V3", "NORMALIZATION"}
#: ONNX ops kept in fp32 under an fp16/bf16 builder flag. The dynamo exporter names nodes
#: generically (node_exp, n3, ...), so the portable scan's exp(delta*A), the stable softplus
#: (relu + log1p(exp(-|x|))) and the decomposed LayerNorm (ReduceMean, Sqrt, Reciprocal) are
#: found by op type, not by name. Only SS2D uses these ops (plus the head's one ReduceMean),
#: so convolutions and GELUs - nearly all the time - still run in reduced precision.
FP32_OP_TYPES = frozenset({"CrossSelectiveScan", "Softplus", "Exp", "Log", "LayerNormalization", "ReduceMean",
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


def default_engine_path(onnx_path: str | os.PathLike, precision: str) -> Path:
    """`model.onnx` -> `model.fp16.engine` next to it."""
    p = Path(onnx_path)
    return p.with_name(f"{p.stem}.{precision}.engine")


def explain_parser_errors(errors: list[str]) -> str:
    """One message for ONNX-parser errors, with the fix for the common plugin case."""
    text = "; ".join(e.strip() for e in errors if e.strip()) or "unknown parser error"
    if re.search(r"plugin not found|No importer registered|getPluginCreator|CrossSelectiveScan", text, re.I):
        return (f"TensorRT could not parse the ONNX: {text}. The graph uses the CrossSelectiveScan "
                "plugin: build the plugin (tinyvim/plugins) and pass its library with --plugin PATH, "
                "or export with --scan portable")
    return f"TensorRT could not parse the ONNX: {text}"


# --------------------------------------------------------------------- TensorRT work
@dataclass
class BuildResult:
    engine_path: Path
    sidecar_path: Path
    sidecar: dict
    seconds: float


def _make_progress_monitor(trt, log: Callable[[str], None]):
    """An IProgressMonitor printing phase starts/ends (TensorRT >= 10 has the class)."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()  # TensorRT may call from several threads
            self._steps: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            with self._lock:
                self._steps[phase_name] = num_steps
                if parent_phase is None:
                    log(f"[build] {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True  # never cancel

        def phase_finish(self, phase_name):
            with self._lock:
                self._steps.pop(phase_name, None)

    return Monitor()


def build_engine(onnx_path: str | os.PathLike, output: str | os.PathLike | None = None, *,
                 precision: str = "fp32", min_batch: int = 1, opt_batch: int | None = None,
                 max_batch: int | None = None, workspace_mib: int | None = None,
                 timing_cache: str | os.PathLike | None = None, plugin: str | os.PathLike | None = None,
                 builder_optimization_level: int | None = None,
                 log: Callable[[str], None] = print) -> BuildResult:
    """Parse `onnx_path`, build a serialized engine, write it atomically plus `<engine>.json`."""
    import json

    import tinyvim
    from tinyvim.engines.model_info import read_onnx_info
    from tinyvim.engines.trt_common import (default_plugin_path, gpu_info, import_tensorrt,
                                            load_plugin_library, make_sidecar, sha256_file, sidecar_path)

    info = read_onnx_info(onnx_path)          # one-line errors for missing / foreign files first
    trt = import_tensorrt()
    gpu = gpu_info()
    policy = precision_policy(precision, trt.__version__, info.precision)
    size = info.fixed_size
    if size is None:
        raise TinyvimError(f"{onnx_path} has a dynamic image size: export with a fixed --img-size")
    shapes = profile_shapes(size, min_batch, opt_batch, max_batch, fixed_batch=info.fixed_batch)

    plugin_path = None
    if info.plugin_nodes or plugin is not None:
        plugin_path = load_plugin_library(plugin if plugin is not None else default_plugin_path())
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")

    builder = trt.Builder(logger)
    # TensorRT releases that drop the flag build strongly typed networks anyway.
    typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    flags = 1 << int(typed) if policy.strongly_typed and typed is not None else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):
        raise TinyvimError(explain_parser_errors([str(parser.get_error(i).desc())
                                                  for i in range(parser.num_errors)]))

    config = builder.create_builder_config()
    if workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if builder_optimization_level is not None:
        config.builder_optimization_level = int(builder_optimization_level)
    for name in policy.set_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in policy.clear_flags:
        if hasattr(trt.BuilderFlag, name):
            config.clear_flag(getattr(trt.BuilderFlag, name))
    if policy.pin_fp32:
        import onnx
        fp32_nodes = fp32_node_names(onnx.load(os.fspath(onnx_path), load_external_data=False).graph)
        pinned = 0
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            kind = layer.type.name
            act = None
            if kind == "ACTIVATION":
                # ILayer.type is shadowed by IActivationLayer.type (the ActivationType)
                # once the layer is viewed as what it is.
                layer.__class__ = trt.IActivationLayer
                act = layer.type.name
            if should_pin_fp32(layer.name, kind, act, getattr(layer, "metadata", "") or "", fp32_nodes):
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
                pinned += 1
        log(f"[build] {pinned} layers pinned to fp32")

    profile = builder.create_optimization_profile()
    for name, s in shapes.items():
        profile.set_shape(name, s["min"], s["opt"], s["max"])
    config.add_optimization_profile(profile)

    cache = None
    if timing_cache is not None:
        blob = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = _make_progress_monitor(trt, log)
    if monitor is not None:
        config.progress_monitor = monitor
    else:
        log("[build] building (TensorRT reports no progress in this version)...")

    for note in policy.notes:
        log(f"[build] {note}")
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise TinyvimError("TensorRT failed to build the engine (see the TensorRT messages above)")

    out = Path(output) if output is not None else default_engine_path(onnx_path, precision)
    atomic_write_bytes(out, bytes(serialized))
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    sidecar = make_sidecar(tinyvim_version=tinyvim.__version__, trt_version=trt.__version__, gpu=gpu,
                           precision=precision, profiles=[shapes], onnx_path=os.fspath(onnx_path),
                           onnx_sha256=sha256_file(onnx_path), onnx_metadata=info.metadata.to_props() if info.metadata else {},
                           build_seconds=seconds, strongly_typed=policy.strongly_typed, plugin=plugin_path)
    side = sidecar_path(out)
    atomic_write_bytes(side, (json.dumps(sidecar, indent=2) + "\n").encode())
    return BuildResult(out, side, sidecar, seconds)
