"""What a TensorRT engine says about itself: its signature and metadata, from the JSON sidecar
`tinyvim build-engine` writes beside it (no TensorRT needed to read it)."""
from __future__ import annotations

import os
from pathlib import Path

from tinyvim.backends.model_file import ModelInfo
from tinyvim.backends.trt.sidecar import read_sidecar
from tinyvim.contract import (
    BACKBONE_OUTPUTS,
    CLASSIFIER_OUTPUTS,
    INPUT_NAME,
    ExportMetadata,
)
from tinyvim.errors import TinyvimError


def read_engine_info(path: str | os.PathLike) -> ModelInfo:
    """Signature + metadata of a TensorRT engine, from its JSON sidecar (no TensorRT needed)."""
    p = Path(path)
    if not p.is_file():
        raise TinyvimError(f"{p}: no such file" if not p.exists() else f"{p}: not a regular file")
    sidecar = read_sidecar(p)
    meta = ExportMetadata.from_props(sidecar.onnx_metadata, source=f"{p}.json")
    if meta is None:
        raise TinyvimError(f"{p}.json has no tinyvim metadata of the ONNX it was built from: rebuild the engine "
                           "with `tinyvim build-engine`")
    batch_range = sidecar.batch_range
    fixed = batch_range[0] if batch_range and batch_range[0] == batch_range[1] else None
    h, w = meta.input_size if meta.input_size else (None, None)
    return ModelInfo(path=os.fspath(p), kind="engine", input_name=INPUT_NAME, input_shape=[fixed, 3, h, w],
                     output_names=list(BACKBONE_OUTPUTS if meta.backbone else CLASSIFIER_OUTPUTS),
                     metadata=meta, precision=sidecar.precision,
                     plugin_nodes=meta.scan == "plugin", batch_range=batch_range)
