"""`tinyvim export --fmt pt2`: a torch.export ExportedProgram (.pt2) with the scan inlined as
standard aten ops, so `torch.export.load` needs torch alone (no tinyvim). Batch and H x W may be
symbolic (torch.export Dims: batch 1..MAX_BATCH, H and W multiples of 32); the tinyvim metadata
travels in the archive as the extra file ARTIFACT_METADATA_NAME (read back by
tinyvim.backends.pt2)."""
from __future__ import annotations

import io
import os
import time
from pathlib import Path
from collections.abc import Callable


from tinyvim.contract import ARTIFACT_METADATA_NAME, INPUT_NAME, InputSpec, ModelSpec, output_names
from tinyvim.errors import TinyvimError
from tinyvim.export.onnx_export import ExportResult
from tinyvim.export.torch_program import export_program, first_line, graph_census, metadata_text, prepare_source
from tinyvim.lazy import lazy_import
from tinyvim.utils import atomic_write_bytes, check_output_path

torch = lazy_import("torch")


def export_pt2(output: str | os.PathLike, model: ModelSpec = ModelSpec(), inputs: InputSpec = InputSpec(), *,
               log: Callable[[str], None] | None = None, **kwargs) -> ExportResult:
    """Trace, export and save the program to `output` (written atomically); kwargs as export_onnx's."""
    check_output_path(output)
    log = log or (lambda m: None)
    start = time.perf_counter()
    deploy, example, metadata = prepare_source("pt2", model, inputs, **kwargs)
    log(f"exporting with torch.export ({'x'.join(map(str, example.shape))} example"
        f"{', batch dynamic' if metadata.dynamic_batch else ''}{', HxW dynamic' if metadata.dynamic_size else ''})")
    program = export_program(deploy, example, dynamic_batch=metadata.dynamic_batch,
                             dynamic_size=metadata.dynamic_size)
    # saved through a buffer: the archive's inner folder is then torch's fixed name, not the
    # safe writer's temporary file name
    buffer = io.BytesIO()
    try:
        torch.export.save(program, buffer, extra_files={ARTIFACT_METADATA_NAME: metadata_text(metadata)})
    except Exception as exc:  # noqa: BLE001 - serialization errors come in many types
        raise TinyvimError(f"saving the ExportedProgram failed: {first_line(exc)}") from exc
    atomic_write_bytes(output, buffer.getvalue())
    nodes, ops = graph_census(program.graph)
    path = Path(output)
    return ExportResult(path=path, metadata=metadata, num_nodes=nodes, op_counts=ops,
                        seconds=time.perf_counter() - start, size_bytes=path.stat().st_size,
                        input_names=[INPUT_NAME], output_names=output_names(metadata.backbone))
