"""`tinyvim export --fmt openvino`: a portable ONNX export converted to OpenVINO IR (.xml + .bin),
with tinyvim's metadata in the IR's rt_info (read back by tinyvim.backends.ov.runner.read_ir_info)."""
from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path

from tinyvim.contract import ExportMetadata
from tinyvim.backends.ov.loader import import_openvino
from tinyvim.contract import IR_RT_INFO_KEY, IR_SUFFIX
from tinyvim.errors import TinyvimError
from tinyvim.utils import atomic_output


def check_ir_path(output: str | os.PathLike) -> Path:
    xml = Path(output)
    if xml.suffix.lower() != IR_SUFFIX:
        raise TinyvimError(f"an OpenVINO IR is named *{IR_SUFFIX} (its weights go beside it in *.bin): got {xml}")
    return xml


def save_ir(onnx_path: str | os.PathLike, output: str | os.PathLike, metadata: ExportMetadata, *,
            compress_to_fp16: bool = False) -> tuple[Path, Path]:
    """Convert a portable ONNX export to OpenVINO IR at `output` (.xml, the .bin beside it).
    Weights stay fp32 unless compress_to_fp16 (OpenVINO's own save_model compresses them by
    default). Both files are written under temporary names beside the target and renamed into
    place, the .bin first, so a reader never pairs a new .xml with an old .bin."""
    ov = import_openvino()
    xml = check_ir_path(output)
    try:
        model = ov.convert_model(os.fspath(onnx_path))
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses with long texts
        raise TinyvimError(f"OpenVINO could not convert {onnx_path}: {str(exc).strip().splitlines()[0][:300]}") from exc
    for key, value in metadata.to_props().items():
        model.set_rt_info(value, [IR_RT_INFO_KEY, key])
    with atomic_output(xml, suffix=IR_SUFFIX) as tmp_xml:
        tmp_bin = tmp_xml.with_suffix(".bin")    # OpenVINO pairs an .xml with the .bin of the same stem
        try:
            ov.save_model(model, os.fspath(tmp_xml), compress_to_fp16=compress_to_fp16)
            os.replace(tmp_bin, xml.with_suffix(".bin"))
        finally:
            if tmp_bin.exists():
                tmp_bin.unlink()
    return xml, xml.with_suffix(".bin")


def export_ir(output: str | os.PathLike, *, compress_to_fp16: bool = False, scan: str = "portable", **export_kwargs):
    """`export_onnx` to a temporary file, then `save_ir` to `output` (.xml). Returns the ONNX
    export's ExportResult with path and size of the IR (.xml + .bin)."""
    from tinyvim.export.onnx_export import export_onnx

    xml = check_ir_path(output)
    if scan != "portable":
        raise TinyvimError("--fmt openvino needs --scan portable: OpenVINO has no CrossSelectiveScan op")
    import_openvino()        # before the minutes of tracing
    with tempfile.TemporaryDirectory(prefix="tinyvim-ir-") as tmp:
        result = export_onnx(Path(tmp) / "model.onnx", scan=scan, **export_kwargs)
        log = export_kwargs.get("log") or (lambda m: None)
        log(f"converting to OpenVINO IR{' (weights compressed to fp16)' if compress_to_fp16 else ''}")
        xml, binary = save_ir(result.path, xml, result.metadata, compress_to_fp16=compress_to_fp16)
    return replace(result, path=xml, size_bytes=xml.stat().st_size + binary.stat().st_size)
