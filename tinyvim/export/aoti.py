"""`tinyvim export --fmt aoti`: an AOTInductor package (.pt2): the ExportedProgram of --fmt pt2
(scan inlined) compiled by Inductor to C++ for this CPU's instruction set, loaded by torch
(`torch._inductor.aoti_load_package`) or by libtorch's AOTIModelPackageLoader without Python.
Compiling takes minutes (about 4 for TinyViM-S on 2 busy cores). The tinyvim metadata is compiled
into the package (inductor config aot_inductor.metadata, key ARTIFACT_METADATA_NAME) and read back
with the loaded model's get_metadata()."""
from __future__ import annotations

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
    quiet_tracing,
)
from tinyvim.lazy import lazy_import
from tinyvim.utils import atomic_output

torch = lazy_import("torch")


def export_aoti(output: str | os.PathLike, model: ModelSpec = ModelSpec(), inputs: InputSpec = InputSpec(), *,
                log: Callable[[str], None] | None = None, **kwargs) -> ExportResult:
    """Export, compile and package to `output` (written atomically; fixed shape)."""
    src = begin_export("aoti", output, model, inputs, log, **kwargs)
    src.log(f"exporting with torch.export ({'x'.join(map(str, src.example.shape))})")
    program = export_program(src.deploy, src.example)
    src.log("compiling with AOTInductor (minutes)")
    import torch._inductor      # the AOTInductor entry point lives in a submodule torch does not import itself
    configs = {"aot_inductor.metadata": {ARTIFACT_METADATA_NAME: metadata_text(src.metadata)}}
    with atomic_output(output, suffix=".pt2") as tmp, quiet_tracing():
        try:
            torch._inductor.aoti_compile_and_package(program, package_path=os.fspath(tmp), inductor_configs=configs)
        except Exception as exc:  # noqa: BLE001 - compiler errors come in many types
            raise TinyvimError(f"AOTInductor compilation failed: {first_line(exc)}") from exc
    return finish_export(src, output, graph_census(program.graph))
