"""`tinyvim export --fmt pt2`: a torch.export ExportedProgram (.pt2) with the scan inlined as
standard aten ops, so `torch.export.load` needs torch alone (no tinyvim). Batch and H x W may be
symbolic (torch.export Dims: batch 1..MAX_BATCH, H and W multiples of 32); the tinyvim metadata
travels in the archive as the extra file ARTIFACT_METADATA_NAME (read back by
tinyvim.backends.pt2)."""
from __future__ import annotations

import io
import os
from collections.abc import Callable


from tinyvim.contract import ARTIFACT_METADATA_NAME, InputSpec, ModelSpec
from tinyvim.errors import TinyvimError
from tinyvim.export.onnx_export import ExportResult
from tinyvim.export.torch_program import (
    begin_export,
    export_program,
    finish_export,
    first_line,
    graph_census,
    metadata_text,
)
from tinyvim.lazy import lazy_import
from tinyvim.utils import atomic_write_bytes

torch = lazy_import("torch")


def export_pt2(output: str | os.PathLike, model: ModelSpec = ModelSpec(), inputs: InputSpec = InputSpec(), *,
               log: Callable[[str], None] | None = None, **kwargs) -> ExportResult:
    """Trace, export and save the program to `output` (written atomically); kwargs as export_onnx's."""
    src = begin_export("pt2", output, model, inputs, log, **kwargs)
    meta = src.metadata
    src.log(f"exporting with torch.export ({'x'.join(map(str, src.example.shape))} example"
            f"{', batch dynamic' if meta.dynamic_batch else ''}{', HxW dynamic' if meta.dynamic_size else ''})")
    program = export_program(src.deploy, src.example, dynamic_batch=meta.dynamic_batch, dynamic_size=meta.dynamic_size)
    # saved through a buffer: the archive's inner folder is then torch's fixed name, not the
    # safe writer's temporary file name
    buffer = io.BytesIO()
    try:
        torch.export.save(program, buffer, extra_files={ARTIFACT_METADATA_NAME: metadata_text(meta)})
    except Exception as exc:  # noqa: BLE001 - serialization errors come in many types
        raise TinyvimError(f"saving the ExportedProgram failed: {first_line(exc)}") from exc
    atomic_write_bytes(output, buffer.getvalue())
    return finish_export(src, output, graph_census(program.graph))
