"""What an ORT-format model (.ort, `tinyvim export --fmt ort`) says about itself: signature and
the tinyvim metadata_props (the ORT flatbuffer keeps them), read through an InferenceSession
(the format has no reader outside ONNX Runtime)."""
from __future__ import annotations

import os
from pathlib import Path

from tinyvim.backends.model_file import ModelInfo, check_signature
from tinyvim.backends.ort.loader import import_onnxruntime
from tinyvim.contract import FP32, ExportMetadata
from tinyvim.errors import TinyvimError, error_reason


def read_ort_info(path: str | os.PathLike) -> ModelInfo:
    p = Path(path)
    if not p.is_file():
        raise TinyvimError(f"{p}: no such file" if not p.exists() else f"{p}: not a regular file")
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL    # only reading
    try:
        session = ort.InferenceSession(os.fspath(p), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise TinyvimError(f"{p} is not an ORT-format model ({error_reason(exc, 200)})") from None
    meta = ExportMetadata.from_props(dict(session.get_modelmeta().custom_metadata_map), source=os.fspath(p))
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise TinyvimError(f"{p} does not look like a TinyViM model: it has {len(inputs)} inputs")
    shape = [d if isinstance(d, int) else None for d in inputs[0].shape]
    info = ModelInfo(path=os.fspath(p), kind="ort", input_name=inputs[0].name, input_shape=shape,
                     output_names=[o.name for o in session.get_outputs()], metadata=meta,
                     precision=meta.precision if meta else FP32)
    check_signature(info)
    return info
