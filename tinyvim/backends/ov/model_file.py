"""What an OpenVINO IR says about itself: signature from the model, tinyvim metadata from its
rt_info (written by `tinyvim export --fmt openvino`)."""
from __future__ import annotations

import os
from pathlib import Path

from tinyvim.backends.model_file import ModelInfo, check_signature
from tinyvim.backends.ov.loader import import_openvino, ir_has_plugin_nodes, new_core, port_name
from tinyvim.contract import FP32, IR_RT_INFO_KEY, IR_WEIGHTS_SUFFIX, ExportMetadata
from tinyvim.errors import TinyvimError, error_reason
from tinyvim.export.openvino_ir import check_ir_weights


def read_ir_info(path: str | os.PathLike):
    """ModelInfo of an OpenVINO IR (.xml beside its .bin): signature from the model, tinyvim
    metadata from its rt_info (written by `tinyvim export --fmt openvino`)."""
    p = Path(path)
    if not p.is_file():
        raise TinyvimError(f"{p}: no such file")
    if not p.with_suffix(IR_WEIGHTS_SUFFIX).is_file():
        raise TinyvimError(f"{p} has no weights file {p.with_suffix(IR_WEIGHTS_SUFFIX).name} beside it")
    check_ir_weights(p)          # the .bin is the one this .xml was written with
    ov = import_openvino()
    plugin_nodes = ir_has_plugin_nodes(p)
    core = new_core(ov, p, plugin_nodes)
    try:
        model = core.read_model(os.fspath(p))
    except Exception as exc:  # noqa: BLE001
        raise TinyvimError(f"{p} is not an OpenVINO IR ({error_reason(exc, 200)})") from None
    props = {}
    if model.has_rt_info(IR_RT_INFO_KEY):
        props = {k: v.astype(str) for k, v in model.get_rt_info()[IR_RT_INFO_KEY].items()}
    meta = ExportMetadata.from_props(props, source=os.fspath(p))
    if len(model.inputs) != 1:
        raise TinyvimError(f"{p} does not look like a TinyViM model: it has {len(model.inputs)} inputs")
    shape = model.inputs[0].get_partial_shape()
    dims = [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else []
    outputs = [port_name(o) for o in model.outputs]
    info = ModelInfo(path=os.fspath(p), kind="openvino", input_name=port_name(model.inputs[0]), input_shape=dims,
                     output_names=outputs, metadata=meta, precision=meta.precision if meta else FP32,
                     plugin_nodes=plugin_nodes)
    check_signature(info)
    return info
