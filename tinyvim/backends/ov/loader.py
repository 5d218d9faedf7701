"""Getting an OpenVINO model ready to compile: the optional import, explicit precision checked
against the device's capabilities, the compile properties, and tinyvim's names of its ports."""
from __future__ import annotations

import os
from xml.etree import ElementTree

from tinyvim.contract import (
    BACKBONE_OUTPUTS,
    CLASSIFIER_OUTPUTS,
    INPUT_NAME,
    IR_EXTENSION_LIBRARY,
    SCAN_PLUGIN,
    TAP_PREFIX,
)
from tinyvim.errors import TinyvimError
from tinyvim.lazy import import_optional
from tinyvim.plugins.errors import PluginError
from tinyvim.plugins.ov_extension import extension_library

#: --ov-precision -> (OpenVINO INFERENCE_PRECISION_HINT, the OPTIMIZATION_CAPABILITIES entry
#: the device must list, tinyvim's compute precision that picks the validation tolerance)
OV_PRECISIONS = {"f32": ("f32", "FP32", "fp32"), "bf16": ("bf16", "BF16", "bf16"), "f16": ("f16", "FP16", "fp16")}
OV_HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
#: how a model with a dynamic batch / image size is compiled: for each input shape it is fed
#: (static: faster kernels) or once for any shape (dynamic); see backends/ov/runner.py
OV_SHAPES = ("static", "dynamic")
DEFAULT_SHAPES = "static"
DEFAULT_PRECISION = "f32"


def import_openvino():
    """openvino, or a one-line error saying how to install it."""
    return import_optional("openvino")


def ir_has_plugin_nodes(xml: str | os.PathLike) -> bool:
    """Does this IR hold CrossSelectiveScan layers (the extension's op, version = the plugin
    namespace)? Read from the .xml text, because OpenVINO cannot read such an IR at all before
    the extension is loaded."""
    try:
        for _, elem in ElementTree.iterparse(os.fspath(xml)):
            if elem.tag == "layer" and (elem.get("type"), elem.get("version")) == (SCAN_PLUGIN.op_type,
                                                                                    SCAN_PLUGIN.namespace):
                return True
            elem.clear()
    except (ElementTree.ParseError, OSError):
        return False      # OpenVINO says what is wrong with the file when it reads it
    return False


def new_core(ov, model: str | os.PathLike, plugin_nodes: bool):
    """An openvino.Core, with the tinyvim extension (the CrossSelectiveScan op and its ONNX
    conversion) added when the model holds plugin nodes; a one-line error when it cannot be had."""
    core = ov.Core()
    if plugin_nodes:
        try:
            library = extension_library()
        except PluginError as exc:
            raise TinyvimError(f"{os.fspath(model)} holds {SCAN_PLUGIN.onnx_domain}::{SCAN_PLUGIN.op_type} nodes, "
                               f"which need the tinyvim OpenVINO extension ({IR_EXTENSION_LIBRARY}): {exc}") from None
        core.add_extension(os.fspath(library))
    return core


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
