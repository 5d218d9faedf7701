"""What a .pte says about itself: the tinyvim metadata, the JSON text its constant method
ARTIFACT_METADATA_METHOD returns (written by `tinyvim export --fmt executorch`)."""
from __future__ import annotations

import os
from pathlib import Path

from tinyvim.backends.executorch.runner import load_program
from tinyvim.backends.model_file import ModelInfo, info_from_metadata
from tinyvim.contract import ARTIFACT_METADATA_METHOD
from tinyvim.errors import TinyvimError
from tinyvim.export.torch_program import parse_metadata_text


def read_pte_info(path: str | os.PathLike) -> ModelInfo:
    p = Path(path)
    if not p.is_file():
        raise TinyvimError(f"{p}: no such file" if not p.exists() else f"{p}: not a regular file")
    program = load_program(p)
    text = None
    if ARTIFACT_METADATA_METHOD in program.method_names:
        (values,) = program.load_method(ARTIFACT_METADATA_METHOD).execute([])
        text = bytes(values.tolist())
    return info_from_metadata(p, "executorch", parse_metadata_text(text, source=os.fspath(p)))
