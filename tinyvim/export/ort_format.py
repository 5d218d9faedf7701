"""`tinyvim export --fmt ort`: ONNX Runtime's mobile format (.ort, a flatbuffer) converted from the
portable ONNX by onnxruntime's own converter (onnxruntime.tools.convert_onnx_models_to_ort), with
the operator list beside it (<stem>.required_operators.config) that a reduced-operator ONNX
Runtime build (build.sh --minimal_build --include_ops_by_config) takes.

`--target-platform` picks the converter's graph optimizations: `arm` (the default: phones) leaves
out the x86-only NCHWc layout transforms, so the file runs on any CPU; `amd64` keeps them (on x86
the arm file runs slower than the .onnx, the amd64 one does not - see docs/targets.md).
The .ort keeps the ONNX metadata_props (ORT's flatbuffer has the field): validate reads it back
through InferenceSession.get_modelmeta like an ONNX file's."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from collections.abc import Callable


from tinyvim.contract import (
    EXPORT_FORMATS,
    InputSpec,
    ModelSpec,
    ORT_REQUIRED_OPS_SUFFIX,
    ORT_TARGET_PLATFORMS,
    PORTABLE_SCAN,
)
from tinyvim.errors import TinyvimError
from tinyvim.export import onnx_export
from tinyvim.export.onnx_export import ExportResult
from tinyvim.export.torch_program import first_line
from tinyvim.lazy import import_optional, lazy_import
from tinyvim.utils import atomic_output, check_output_paths, scratch_directory

onnx = lazy_import("onnx")

DEFAULT_TARGET_PLATFORM = "arm"


def check_target_platform(target_platform: str | None) -> str:
    name = (target_platform or DEFAULT_TARGET_PLATFORM).lower()
    if name not in ORT_TARGET_PLATFORMS:
        raise TinyvimError(f"unknown --target-platform {target_platform!r}: choose {' or '.join(ORT_TARGET_PLATFORMS)}")
    return name


def ort_outputs(output: str | os.PathLike, *, json_path=None, inputs=()) -> tuple[Path, Path]:
    """The .ort and its operator list, checked as the safe writer will write them."""
    path = Path(output)
    if path.suffix.lower() != ".ort":
        raise TinyvimError(f"an ONNX Runtime mobile model is named *.ort: got {path}")
    ort_file, config = (Path(p) for p in EXPORT_FORMATS["ort"].files(path))
    check_output_paths({"-o": ort_file, "the operator list": config, "--json": json_path}, inputs=inputs)
    return ort_file, config


def convert_to_ort(onnx_path: Path, workdir: Path, target_platform: str) -> tuple[Path, Path]:
    """onnxruntime's converter on one ONNX file, fixed optimizations (what a minimal build can
    run), into `workdir`; returns (.ort, operator list)."""
    tool = import_optional("onnxruntime.tools.convert_onnx_models_to_ort")
    sink = io.StringIO()
    # the converter prints progress and logs an INFO line through its own logger: kept out
    logger = logging.getLogger("ort_format_model.utils")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            tool.convert_onnx_models_to_ort(onnx_path, output_dir=workdir,
                                            optimization_styles=[tool.OptimizationStyle.Fixed],
                                            target_platform=target_platform)
    except Exception as exc:  # noqa: BLE001 - the converter raises many types
        raise TinyvimError(f"ONNX Runtime could not convert {onnx_path.name} to the ORT format: "
                           f"{first_line(exc)}") from exc
    finally:
        logger.setLevel(level)
    ort_file = workdir / onnx_path.with_suffix(".ort").name
    config = workdir / (onnx_path.stem + ORT_REQUIRED_OPS_SUFFIX)
    if not ort_file.is_file() or not config.is_file():
        raise TinyvimError(f"ONNX Runtime's converter wrote no .ort for {onnx_path.name}: {sink.getvalue()[-300:]}")
    return ort_file, config


def _operator_list(config: Path, final_name: str) -> str:
    """The converter's config, its comment naming the scratch file replaced by the real name."""
    lines = config.read_text().splitlines()
    return "\n".join(f"# - {final_name}" if line.startswith("# - ") else line for line in lines) + "\n"


def export_ort(output: str | os.PathLike, model: ModelSpec = ModelSpec(), inputs: InputSpec = InputSpec(), *,
               target_platform: str | None = None, source_onnx: str | os.PathLike | None = None,
               log: Callable[[str], None] | None = None, **export_kwargs) -> ExportResult:
    """A portable ONNX export of `model` at `inputs` (or `source_onnx`, an existing portable export)
    converted to `output` (.ort) and its operator list, both written atomically. export_kwargs as
    export_onnx's (scan, precision, opset, network)."""
    platform = check_target_platform(target_platform)
    if export_kwargs.get("scan", PORTABLE_SCAN) != PORTABLE_SCAN:
        raise TinyvimError("--fmt ort needs --scan portable: a mobile ONNX Runtime has no CrossSelectiveScan op")
    ort_file, config = ort_outputs(output)
    log = log or (lambda m: None)
    start = time.perf_counter()
    with scratch_directory("tinyvim-ort-") as tmp:
        onnx_path = tmp / "model.onnx"
        if source_onnx is None:
            result = onnx_export.export_onnx(onnx_path, model, inputs, log=log, **export_kwargs)     # looked up when called
        else:
            shutil.copyfile(source_onnx, onnx_path)
            result = _onnx_result(onnx_path)
            if result.metadata is not None and result.metadata.scan != PORTABLE_SCAN:
                raise TinyvimError(f"{source_onnx} is a --scan plugin export: the ORT format needs a portable one")
        log(f"converting to the ORT format (target platform {platform})")
        staged, staged_config = convert_to_ort(onnx_path, tmp / "out", platform)
        with atomic_output(ort_file, suffix=".ort") as tmp_ort, atomic_output(config) as tmp_config:
            shutil.copyfile(staged, tmp_ort)
            tmp_config.write_text(_operator_list(staged_config, ort_file.name))
    return replace(result, path=ort_file, seconds=time.perf_counter() - start, size_bytes=ort_file.stat().st_size)


def _onnx_result(path: Path) -> ExportResult:
    proto = onnx.load(os.fspath(path))
    meta = onnx_export.read_metadata(proto)
    if meta is None:
        raise TinyvimError(f"{path} carries no tinyvim metadata: convert a `tinyvim export` ONNX")
    return ExportResult(path=path, metadata=meta, num_nodes=len(proto.graph.node), op_counts=onnx_export.op_counts(proto),
                        seconds=0.0, size_bytes=path.stat().st_size, input_names=[i.name for i in proto.graph.input],
                        output_names=[o.name for o in proto.graph.output])
