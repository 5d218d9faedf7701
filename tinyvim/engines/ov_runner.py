"""OpenVINO runner: a portable ONNX export or an OpenVINO IR (.xml + .bin) on CPU or GPU.

Precision is always explicit. OpenVINO's own default on a CPU with AVX512-BF16 or AMX is
bf16 (it picks it silently, ~2e-3 error on TinyViM's logits), which would fail an fp32
comparison for a user who did not ask for it; here `--ov-precision` (f32 unless given) becomes
INFERENCE_PRECISION_HINT, and a precision the device does not list in its
OPTIMIZATION_CAPABILITIES is refused in one line. `--threads` becomes INFERENCE_NUM_THREADS
(CPU), `--ov-hint latency|throughput` PERFORMANCE_HINT, `--ov-device` the device.

The plugin flavour (custom CrossSelectiveScan node) is refused: OpenVINO has no such op.
`openvino` is imported lazily (optional extra `tinyvim[openvino]`).
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from tinyvim.contract import (BACKBONE_OUTPUTS, CLASSIFIER_OUTPUTS, INPUT_NAME, IR_RT_INFO_KEY, IR_WEIGHTS_SUFFIX,
                              SCAN_PLUGIN, ExportMetadata, check_input_size)
from tinyvim.engines.base import BaseRunner
from tinyvim.engines.per_block import TAP_PREFIX
from tinyvim.errors import TinyvimError

#: --ov-precision -> (OpenVINO INFERENCE_PRECISION_HINT, the OPTIMIZATION_CAPABILITIES entry
#: the device must list, tinyvim's compute precision that picks the validation tolerance)
OV_PRECISIONS = {"f32": ("f32", "FP32", "fp32"), "bf16": ("bf16", "BF16", "bf16"), "f16": ("f16", "FP16", "fp16")}
OV_HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
DEFAULT_PRECISION = "f32"
#: where IR files keep tinyvim's metadata (the ONNX metadata_props keys and texts, under this rt_info path)
RT_INFO_KEY = IR_RT_INFO_KEY


def import_openvino():
    """openvino, or a one-line error saying how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise TinyvimError("OpenVINO is not installed: pip install 'tinyvim[openvino]' (the openvino package "
                           "from PyPI)") from exc
    return openvino


#: where OpenVINO's messages say which C++ line raised ("Exception from src/...:84:",
#: "Check 'x' failed at src/...:887:"), before the reason
_OV_LOCATION = re.compile(r"^(?:\[\s*\w+\s*\]\s*)?(?:Exception from \S+:\d+:?|Check '.*?' failed at \S+:\d+:?)\s*")


def ov_error_reason(exc: BaseException) -> str:
    """OpenVINO's exception text reduced to its reason, on one line (at most 300 characters)."""
    lines = []
    for line in str(exc).splitlines():
        line = line.strip()
        while (shorter := _OV_LOCATION.sub("", line, count=1)) != line:
            line = shorter
        if line:
            lines.append(line)
    if not lines:
        return type(exc).__name__
    reason = lines[0]
    if reason.endswith(":") and len(lines) > 1:     # "FrontEnd API failed with X:" + the reason
        reason = f"{reason} {lines[1]}"
    return reason[:300]


def port_name(port) -> str:
    """The name tinyvim gave an input or output: OpenVINO folds Identity and Cast-free chains and
    merges tensor names, so a port may carry several (the fp16 export's `images` and its cast,
    a per-block tap and the tensor it copies); tinyvim's names (images, logits, featN, taps) win."""
    names = port.get_names()
    ours = sorted(n for n in names if n in (INPUT_NAME,) + CLASSIFIER_OUTPUTS + BACKBONE_OUTPUTS
                  or n.startswith(TAP_PREFIX))
    return ours[0] if ours else port.get_any_name()


def device_description(core, device: str) -> str:
    try:
        return str(core.get_property(device, "FULL_DEVICE_NAME"))
    except Exception:  # noqa: BLE001 - a description only; some plugins lack the property
        return device


def supported_precisions(core, device: str) -> list[str]:
    """The --ov-precision values `device` can compute in, from its OPTIMIZATION_CAPABILITIES."""
    caps = {str(c).upper() for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES")}
    return [name for name, (_, cap, _) in OV_PRECISIONS.items() if cap in caps]


def resolve_precision(core, device: str, requested: str | None) -> str:
    """The precision to compile with: `requested` (default f32) when `device` supports it,
    else a one-line error naming what the device offers and why (bf16 needs AVX512-BF16 or
    AMX on a CPU). `core` is an openvino.Core or anything with the same get_property."""
    name = (requested or DEFAULT_PRECISION).lower()
    if name not in OV_PRECISIONS:
        raise TinyvimError(f"unknown --ov-precision {requested!r}: choose {', '.join(OV_PRECISIONS)}")
    offered = supported_precisions(core, device)
    if name not in offered:
        why = {"bf16": " (a CPU needs AVX512-BF16 or AMX for it)",
               "f16": " (a CPU needs AVX512-FP16 or AMX-FP16 for it; GPUs have it)"}.get(name, "")
        raise TinyvimError(f"OpenVINO {device} on this machine ({device_description(core, device)}) does not support "
                           f"{name}{why}: it offers {', '.join(offered) or 'nothing'}; use --ov-precision "
                           f"{offered[0] if offered else 'f32'}")
    return name


def compile_config(device: str, precision: str, threads: int | None, hint: str | None) -> dict:
    """The properties passed to compile_model (explicit precision, hint, CPU threads)."""
    if (hint or "latency").lower() not in OV_HINTS:
        raise TinyvimError(f"unknown --ov-hint {hint!r}: choose {', '.join(OV_HINTS)}")
    config = {"INFERENCE_PRECISION_HINT": OV_PRECISIONS[precision][0],
              "PERFORMANCE_HINT": OV_HINTS[(hint or "latency").lower()]}
    if threads and device.upper().startswith("CPU"):
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


class OvRunner(BaseRunner):
    """Runs an ONNX file or an OpenVINO IR with openvino.Core.compile_model."""

    def __init__(self, model: str | os.PathLike, *, device: str | None = None, precision: str | None = None,
                 threads: int | None = None, hint: str | None = None, plugin_nodes: bool = False,
                 log=None, name: str = "ov"):
        super().__init__(name)
        self.model = os.fspath(model)
        self.device = (device or "CPU").upper()
        self.requested_precision = precision
        self.threads = threads
        self.hint = hint
        self.plugin_nodes = plugin_nodes
        self.log = log
        self.precision: str | None = None           # resolved on activate
        self.config: dict = {}
        self._compiled = None
        self._request = None
        self._dynamic_size = False

    @property
    def compute_precision(self) -> str:
        """tinyvim's name of what it computes in (fp32, bf16, fp16): picks validate's tolerance."""
        return OV_PRECISIONS[self.precision or (self.requested_precision or DEFAULT_PRECISION).lower()][2]

    def activate_impl(self) -> None:
        if self.plugin_nodes:
            raise TinyvimError(f"this ONNX graph contains the custom {SCAN_PLUGIN.onnx_domain}::{SCAN_PLUGIN.op_type} "
                               "node (exported with --scan plugin), which OpenVINO cannot run: export with "
                               "--scan portable for OpenVINO")
        ov = import_openvino()
        core = ov.Core()
        available = core.available_devices
        if not any(d == self.device or d.startswith(self.device + ".") for d in available) and self.device != "AUTO":
            raise TinyvimError(f"OpenVINO device {self.device} is not available here; available: "
                               f"{', '.join(available) or 'none'}")
        probe = self.device if self.device != "AUTO" else "CPU"
        self.precision = resolve_precision(core, probe, self.requested_precision)
        if self.log:
            others = [p for p in supported_precisions(core, probe) if p != self.precision]
            self.log(f"OpenVINO {ov.__version__.split('-')[0]} on {probe} ({device_description(core, probe)}): "
                     f"computing in {self.precision}" + (f"; this device also supports {', '.join(others)} "
                                                         "(--ov-precision)" if others else ""))
        self.config = compile_config(self.device, self.precision, self.threads, self.hint)
        try:
            compiled = core.compile_model(self.model, self.device, self.config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses with long texts
            raise TinyvimError(f"OpenVINO could not compile {self.model}: {ov_error_reason(exc)}") from exc
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._inputs = [port_name(i) for i in compiled.inputs]
        self._outputs = [port_name(o) for o in compiled.outputs]
        shape = compiled.inputs[0].get_partial_shape()
        self._dynamic_size = shape.rank.get_length() == 4 and (shape[2].is_dynamic or shape[3].is_dynamic)

    def deactivate_impl(self) -> None:
        self._request = None
        self._compiled = None

    def infer_impl(self, feed: Mapping[str, np.ndarray]):
        arrays = {n: np.ascontiguousarray(feed[n], dtype=np.float32) for n in self._inputs}
        if self._dynamic_size:
            # the graph itself cannot say it: a size that is not a multiple of 32 would fail
            # deep inside it (or give wrong maps), so it is refused here in one line
            for a in arrays.values():
                check_input_size(*a.shape[2:])
        start = time.perf_counter()
        results = self._request.infer(list(arrays.values()))     # by position: names may be merged
        compute = time.perf_counter() - start
        outputs = {port_name(port): np.array(value, copy=True) for port, value in results.items()}
        return {n: outputs[n] for n in self._outputs}, {"compute": compute}


# --------------------------------------------------------------------- OpenVINO IR files
def read_ir_info(path: str | os.PathLike):
    """ModelInfo of an OpenVINO IR (.xml beside its .bin): signature from the model, tinyvim
    metadata from its rt_info (written by `tinyvim export --fmt openvino`)."""
    from tinyvim.engines.model_info import ModelInfo, check_signature

    from tinyvim.export.openvino_ir import check_ir_weights

    p = Path(path)
    if not p.is_file():
        raise TinyvimError(f"{p}: no such file")
    if not p.with_suffix(IR_WEIGHTS_SUFFIX).is_file():
        raise TinyvimError(f"{p} has no weights file {p.with_suffix(IR_WEIGHTS_SUFFIX).name} beside it")
    check_ir_weights(p)          # the .bin is the one this .xml was written with
    ov = import_openvino()
    try:
        model = ov.Core().read_model(os.fspath(p))
    except Exception as exc:  # noqa: BLE001
        raise TinyvimError(f"{p} is not an OpenVINO IR ({ov_error_reason(exc)})") from None
    props = {}
    if model.has_rt_info(RT_INFO_KEY):
        props = {k: v.astype(str) for k, v in model.get_rt_info()[RT_INFO_KEY].items()}
    meta = ExportMetadata.from_props(props, source=os.fspath(p))
    if len(model.inputs) != 1:
        raise TinyvimError(f"{p} does not look like a TinyViM model: it has {len(model.inputs)} inputs")
    shape = model.inputs[0].get_partial_shape()
    dims = [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else []
    outputs = [port_name(o) for o in model.outputs]
    info = ModelInfo(path=os.fspath(p), kind="openvino", input_name=port_name(model.inputs[0]), input_shape=dims,
                     output_names=outputs, metadata=meta, precision=meta.precision if meta else "fp32")
    check_signature(info)
    return info
