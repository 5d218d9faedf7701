"""The file formats of `tinyvim export --fmt` (contract.EXPORT_FORMATS) behind one entry: the
default output name, every check before the work (arguments, then each file the format writes),
and the writer of each format. The command only parses and prints.

    result = export_model("openvino", "s.xml", ModelSpec("s"), InputSpec((224, 224)), compress_to_fp16=True)

or in two steps, to say something between the checks and the minutes of tracing:

    plan = plan_export("onnx", None, ModelSpec("s"))      # raises TinyvimError, builds nothing
    result = plan.run(log=print)

`--fmt triton` writes a model repository folder: tinyvim.serve.repository.write_repository.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

from tinyvim.contract import (
    DYNAMIC,
    EXPORT_FORMATS,
    FP32,
    PORTABLE_SCAN,
    InputSpec,
    ModelSpec,
    Precision,
    ScanFlavour,
    format_size,
)
from tinyvim.errors import TinyvimError
from tinyvim.export import aoti, executorch, onnx_export, ort_format, pt2, torchscript
from tinyvim.export.onnx_export import ExportResult, check_export_args
from tinyvim.export.openvino_ir import check_ir_outputs, export_ir, ir_extension
from tinyvim.export.ort_format import check_target_platform, ort_outputs
from tinyvim.export.torch_program import TORCH_FORMATS, check_torch_format_args
from tinyvim.lazy import import_optional
from tinyvim.utils import atomic_write_json, check_output_paths

#: the formats plan_export writes (a folder format has its own writer)
FILE_FORMATS = tuple(name for name, spec in EXPORT_FORMATS.items() if not spec.is_folder)


def default_output(fmt: str, model: ModelSpec = ModelSpec(), inputs: InputSpec = InputSpec(), *,
                   scan: ScanFlavour = PORTABLE_SCAN, precision: Precision = FP32) -> str:
    """tinyvim-<variant>[-backbone]-<size>-<scan>[-<precision>]<suffix>, e.g. tinyvim-s-224-portable.onnx."""
    size = inputs.size
    size = DYNAMIC if size is None else (format_size(size) if size[0] != size[1] else str(size[0]))
    parts = [f"tinyvim-{model.variant}", "backbone" if model.backbone else "", size, scan,
             precision if precision != FP32 else ""]
    return "-".join(p for p in parts if p) + EXPORT_FORMATS[fmt].suffix


def check_format_flags(fmt: str, *, compress_to_fp16: bool = False, target_platform: str | None = None) -> None:
    """The format is known, and its flags belong to it."""
    if fmt not in EXPORT_FORMATS:
        raise TinyvimError(f"unknown export format {fmt!r}: choose {', '.join(EXPORT_FORMATS)}")
    if compress_to_fp16 and fmt != "openvino":
        raise TinyvimError("--compress-to-fp16 applies to --fmt openvino (an fp16 ONNX is --precision fp16)")
    if target_platform is not None and fmt != "ort":
        raise TinyvimError("--target-platform applies to --fmt ort")
    if fmt == "ort":
        check_target_platform(target_platform)


#: the PyTorch 2 formats: what the export needs installed, checked before the minutes of tracing
_NEEDS = {"openvino": "openvino", "ort": "onnxruntime", "executorch": "executorch"}


def _writers() -> dict[str, Callable]:
    """fmt -> writer(output, log=..., **kwargs). Looked up when called (one place to stand in for
    an exporter in tests)."""
    return {"onnx": onnx_export.export_onnx, "openvino": export_ir, "pt2": pt2.export_pt2,
            "torchscript": torchscript.export_torchscript, "ort": ort_format.export_ort,
            "aoti": aoti.export_aoti, "executorch": executorch.export_executorch}


@dataclass
class ExportPlan:
    """A checked export: nothing built yet. `files` are every path it writes."""
    fmt: str
    output: Path
    files: tuple[Path, ...]
    json_path: str | None = None
    compress_to_fp16: bool = False
    model: ModelSpec = ModelSpec()
    inputs: InputSpec = InputSpec()
    export_kwargs: dict = field(default_factory=dict)
    target_platform: str | None = None

    def run(self, log: Callable[[str], None] | None = None) -> ExportResult:
        """Build, trace and write; then the JSON report when one was asked for."""
        kwargs = dict(self.export_kwargs)
        if self.fmt == "openvino":
            kwargs["compress_to_fp16"] = self.compress_to_fp16
        if self.fmt == "ort":
            kwargs["target_platform"] = self.target_platform
        result = _writers()[self.fmt](self.output, self.model, self.inputs, log=log, **kwargs)
        if self.json_path:
            atomic_write_json(self.json_path, export_report(result, self.files))
        return result


def plan_export(fmt: str, output: str | os.PathLike | None = None, model: ModelSpec = ModelSpec(),
                inputs: InputSpec = InputSpec(), *, scan: ScanFlavour = PORTABLE_SCAN, precision: Precision = FP32,
                opset: int | None = None, json_path: str | os.PathLike | None = None, compress_to_fp16: bool = False,
                target_platform: str | None = None,
                **export_kwargs) -> ExportPlan:
    """Every argument, then every file the export writes (the safe writer's checks: each path
    writable, none a folder, device or an input), before anything is built. `output` None: the
    default name in the current folder. Other keyword arguments go to export_onnx."""
    check_format_flags(fmt, compress_to_fp16=compress_to_fp16, target_platform=target_platform)
    spec = EXPORT_FORMATS[fmt]
    if spec.is_folder:
        raise TinyvimError(f"--fmt {fmt} writes {spec.doc}: use tinyvim.serve.repository.write_repository")
    if fmt in TORCH_FORMATS:      # no opset there: its own check refuses one in those words
        check_torch_format_args(fmt, inputs, scan=scan, precision=precision, opset=opset)
    else:
        check_export_args(scan=scan, precision=precision, opset=opset)
    if fmt == "openvino" and scan != PORTABLE_SCAN:
        ir_extension()      # the plugin flavour's IR needs our OpenVINO extension: said before the tracing
    if fmt == "ort" and scan != PORTABLE_SCAN:
        raise TinyvimError("--fmt ort needs --scan portable: a mobile ONNX Runtime has no CrossSelectiveScan op")
    output = os.fspath(output) if output else default_output(fmt, model, inputs, scan=scan, precision=precision)
    if os.path.isdir(output):      # os.path: a name too long to stat is the writer's check below
        example = Path(output) / f"model{spec.suffix}"
        raise TinyvimError(f"-o {output} is a folder: --fmt {fmt} writes {spec.doc} (e.g. -o {example}); "
                           "a Triton model repository is --fmt triton")
    read = {"--checkpoint": model.checkpoint}
    if fmt == "openvino":
        files = check_ir_outputs(output, json_path=json_path, inputs=read)
    elif fmt == "ort":
        files = ort_outputs(output, json_path=json_path, inputs=read)
    else:
        # torch's loaders pick the format by the suffix (.pt2 above all): the name must carry it
        if fmt in TORCH_FORMATS and not output.lower().endswith(spec.suffix):
            raise TinyvimError(f"--fmt {fmt} writes {spec.doc}, named *{spec.suffix}: got -o {output}")
        check_output_paths({"-o": output, "--json": json_path}, inputs=read)
        files = (Path(output),)
    if fmt in _NEEDS:
        import_optional(_NEEDS[fmt])          # a missing extra is said before the minutes of tracing
    kwargs = dict(scan=scan, precision=precision, opset=opset, **export_kwargs)
    return ExportPlan(fmt, Path(output), tuple(files), os.fspath(json_path) if json_path else None,
                      compress_to_fp16, model, inputs, kwargs, target_platform)


def export_model(fmt: str, output: str | os.PathLike | None = None, *,
                 log: Callable[[str], None] | None = None, **kwargs) -> ExportResult:
    """`tinyvim export --fmt FMT` (any file format) as one call: plan_export(fmt, output, **kwargs).run(log)."""
    return plan_export(fmt, output, **kwargs).run(log)


def export_report(result: ExportResult, files=()) -> dict:
    """The `export --json` document."""
    return {"path": str(result.path), "files": [str(f) for f in files] or [str(result.path)],
            "size_bytes": result.size_bytes, "num_nodes": result.num_nodes, "op_counts": result.op_counts,
            "seconds": result.seconds, "metadata": result.metadata.to_props()}
