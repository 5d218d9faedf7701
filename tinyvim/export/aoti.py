"""`tinyvim export --fmt aoti`: an AOTInductor package (.pt2): the ExportedProgram of --fmt pt2
(scan inlined) compiled by Inductor to C++ for this CPU's instruction set, loaded by torch
(`torch._inductor.aoti_load_package`) or by libtorch's AOTIModelPackageLoader without Python.
Compiling takes minutes (about 4 for TinyViM-S on 2 busy cores). The tinyvim metadata is compiled
into the package (inductor config aot_inductor.metadata, key ARTIFACT_METADATA_NAME) and read back
with the loaded model's get_metadata()."""
from __future__ import annotations

import os
import time
from pathlib import Path
from collections.abc import Callable


from tinyvim.contract import ARTIFACT_METADATA_NAME, INPUT_NAME, InputSpec, ModelSpec, output_names
from tinyvim.errors import TinyvimError
from tinyvim.export.onnx_export import ExportResult
from tinyvim.export.torch_program import (
    export_program,
    first_line,
    graph_census,
    metadata_text,
    prepare_source,
    quiet_tracing,
)
from tinyvim.lazy import lazy_import
from tinyvim.utils import atomic_output, check_output_path

torch = lazy_import("torch")


def export_aoti(output: str | os.PathLike, model: ModelSpec = ModelSpec(), inputs: InputSpec = InputSpec(), *,
                log: Callable[[str], None] | None = None, **kwargs) -> ExportResult:
    """Export, compile and package to `output` (written atomically; fixed shape)."""
    check_output_path(output)
    log = log or (lambda m: None)
    start = time.perf_counter()
    deploy, example, metadata = prepare_source("aoti", model, inputs, **kwargs)
    log(f"exporting with torch.export ({'x'.join(map(str, example.shape))})")
    program = export_program(deploy, example)
    log("compiling with AOTInductor (minutes)")
    import torch._inductor      # the AOTInductor entry point lives in a submodule torch does not import itself
    configs = {"aot_inductor.metadata": {ARTIFACT_METADATA_NAME: metadata_text(metadata)}}
    with atomic_output(output, suffix=".pt2") as tmp, quiet_tracing():
        try:
            torch._inductor.aoti_compile_and_package(program, package_path=os.fspath(tmp), inductor_configs=configs)
        except Exception as exc:  # noqa: BLE001 - compiler errors come in many types
            raise TinyvimError(f"AOTInductor compilation failed: {first_line(exc)}") from exc
    nodes, ops = graph_census(program.graph)
    path = Path(output)
    return ExportResult(path=path, metadata=metadata, num_nodes=nodes, op_counts=ops,
                        seconds=time.perf_counter() - start, size_bytes=path.stat().st_size,
                        input_names=[INPUT_NAME], output_names=output_names(metadata.backbone))
