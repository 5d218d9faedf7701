"""`tinyvim export --fmt openvino`: a portable ONNX export converted to OpenVINO IR (.xml + .bin),
with tinyvim's metadata in the IR's rt_info (read back by tinyvim.backends.ov.model_file.read_ir_info).

OpenVINO pairs x.xml with x.bin by name alone: a .bin replaced, restored from a backup or left
by an earlier export would run under the wrong graph without a word. So the .xml records the
size and sha256 of the .bin written with it (rt_info `IR_WEIGHTS_RECORD`), and
`check_ir_weights` compares them before a pair is read. Both files go through the safe writer
(tinyvim.utils: atomic, a symlink's target written, an existing file's mode kept); OpenVINO
itself only ever writes into a private scratch folder, removed on SIGTERM too.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from dataclasses import replace
from pathlib import Path
from xml.etree import ElementTree

from tinyvim.contract import (
    IR_EXTENSION_LIBRARY,
    IR_EXTENSION_RT_INFO_KEY,
    IR_RT_INFO_KEY,
    IR_SUFFIX,
    IR_WEIGHTS_SUFFIX,
    PORTABLE_SCAN,
    SCAN_PLUGIN,
    ExportMetadata,
    InputSpec,
    ModelSpec,
    ScanFlavour,
)
from tinyvim.errors import TinyvimError
from tinyvim.errors import error_reason as ov_error_reason
from tinyvim.export import onnx_export
from tinyvim.lazy import import_optional
from tinyvim.plugins.errors import PluginError
from tinyvim.plugins.ov_extension import extension_library
from tinyvim.utils import (
    atomic_output,
    check_output_paths,
    file_sha256,
    scratch_directory,
)

try:
    import resource
except ImportError:      # not on Windows
    resource = None

#: rt_info section of the .xml naming the .bin it was written with: {"bytes": str, "sha256": str}
IR_WEIGHTS_RECORD = "tinyvim_weights"
#: how the safe writer's messages name the .bin
WEIGHTS_LABEL = "the IR's weights"


def check_ir_path(output: str | os.PathLike) -> Path:
    xml = Path(output)
    if xml.suffix.lower() != IR_SUFFIX:
        raise TinyvimError(f"an OpenVINO IR is named *{IR_SUFFIX} (its weights go beside it in "
                           f"*{IR_WEIGHTS_SUFFIX}): got {xml}")
    return xml


def weights_path(xml: str | os.PathLike) -> Path:
    """The .bin OpenVINO reads with `xml`: the same folder and stem as the name given (OpenVINO
    does not follow a symlinked .xml to find it)."""
    return Path(xml).with_suffix(IR_WEIGHTS_SUFFIX)


def check_ir_outputs(output: str | os.PathLike, *, json_path: str | os.PathLike | None = None,
                     inputs=()) -> tuple[Path, Path]:
    """Both files of the IR at `output` (and the JSON report, if any) checked as the safe writer
    will write them, before any work; returns (.xml, .bin)."""
    xml = check_ir_path(output)
    binary = weights_path(xml)
    check_output_paths({"-o": xml, WEIGHTS_LABEL: written_weights_path(xml), "--json": json_path}, inputs=inputs)
    return xml, binary


def written_weights_path(xml: str | os.PathLike) -> Path:
    """Where the .bin of `xml` is written: beside the .xml actually written (a symlinked -o's
    target), so that the pair at the target reads too; the name OpenVINO reads with the link
    (weights_path) then becomes a link to it (_link_weights)."""
    return weights_path(os.path.realpath(xml)) if os.path.islink(xml) else weights_path(xml)


def _link_weights(xml: Path, written: Path) -> None:
    """Make weights_path(xml) lead to `written` when `xml` is a symlink and it does not already:
    OpenVINO reads link.bin with link.xml, whatever the link points at. The old entry (a file of an
    earlier export, a link elsewhere) is replaced in one rename by a relative link."""
    name = weights_path(xml)
    if os.path.realpath(name) == os.path.realpath(written):
        return
    tmp = name.with_name(f".{name.name}.link-{os.getpid()}")
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(os.path.relpath(written, name.parent), tmp)
        os.replace(tmp, name)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise TinyvimError(f"wrote {xml} and {written}, but could not point {name} at {written.name} "
                           f"({exc.strerror or exc}): OpenVINO reads {name.name} with {xml.name}") from None


def ir_extension() -> Path:
    """The tinyvim OpenVINO extension a plugin-flavour IR is converted (and later read) with, or a
    one-line error saying why there is none."""
    try:
        return extension_library()
    except PluginError as exc:
        raise TinyvimError(f"--fmt openvino --scan plugin needs the tinyvim OpenVINO extension "
                           f"({IR_EXTENSION_LIBRARY}): {exc}") from None


def ir_metadata(metadata: ExportMetadata, compress_to_fp16: bool) -> ExportMetadata:
    """The metadata an IR records: with --compress-to-fp16 its weights are fp16 (validate then
    judges it at the fp16 tolerance: fp32 arithmetic on fp16-rounded weights)."""
    return replace(metadata, weights="fp16") if compress_to_fp16 else metadata


def save_ir(onnx_path: str | os.PathLike, output: str | os.PathLike, metadata: ExportMetadata, *,
            compress_to_fp16: bool = False, extension: Path | None = None) -> tuple[Path, Path]:
    """Convert a portable ONNX export to OpenVINO IR at `output` (.xml, the .bin beside it).
    Weights stay fp32 unless compress_to_fp16 (OpenVINO's own save_model compresses them by
    default). A plugin-flavour ONNX is converted with `extension` (the tinyvim OpenVINO extension),
    and the IR's rt_info names it for whoever reads the IR. OpenVINO writes the pair into a scratch
    folder; the safe writer then puts the .bin and the .xml in place, each replaced in one rename.
    Returns (.xml, .bin)."""
    ov = import_optional("openvino")
    xml, binary = check_ir_outputs(output)
    try:
        model = ov.convert_model(os.fspath(onnx_path), **({"extension": os.fspath(extension)} if extension else {}))
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses with long texts
        raise TinyvimError(f"OpenVINO could not convert {onnx_path}: {ov_error_reason(exc)}") from exc
    for key, value in ir_metadata(metadata, compress_to_fp16).to_props().items():
        model.set_rt_info(value, [IR_RT_INFO_KEY, key])
    if extension:
        for key, value in (("library", IR_EXTENSION_LIBRARY), ("op", f"{SCAN_PLUGIN.namespace}::{SCAN_PLUGIN.op_type}")):
            model.set_rt_info(value, [IR_EXTENSION_RT_INFO_KEY, key])
    with scratch_directory("tinyvim-ir-") as scratch:
        staged = scratch / f"model{IR_SUFFIX}"
        staged_bin = weights_path(staged)
        # save_model writes .xml and .bin together: a first save learns the .bin's size and
        # digest, a second one writes the .xml recording them (same weights, checked below)
        _save(ov, model, staged, compress_to_fp16)
        record = {"bytes": str(staged_bin.stat().st_size), "sha256": file_sha256(staged_bin)}
        for key, value in record.items():
            model.set_rt_info(value, [IR_WEIGHTS_RECORD, key])
        _save(ov, model, staged, compress_to_fp16)
        if file_sha256(staged_bin) != record["sha256"]:
            raise TinyvimError("internal: OpenVINO wrote different weights for the same model twice")
        # The inner writer (.bin) renames first; a reader between the two renames, or a failed
        # second rename, leaves a pair that check_ir_weights refuses, never one run silently.
        written = written_weights_path(xml)
        with atomic_output(xml, suffix=IR_SUFFIX) as tmp_xml, \
                atomic_output(written, suffix=IR_WEIGHTS_SUFFIX) as tmp_bin:
            _move(staged_bin, tmp_bin)
            _move(staged, tmp_xml)
    _link_weights(xml, written)
    return xml, binary


def _save(ov, model, path: Path, compress_to_fp16: bool) -> None:
    try:
        ov.save_model(model, os.fspath(path), compress_to_fp16=compress_to_fp16)
    except Exception as exc:  # noqa: BLE001 - a full disk surfaces as "basic_ios::clear: iostream error"
        try:
            free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free there"
        except OSError:
            free = "free space unknown"
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource else -1
        if limit not in (-1, getattr(resource, "RLIM_INFINITY", -1)):
            free += f", file size limit {limit} bytes (ulimit -f)"
        raise TinyvimError(f"OpenVINO could not write the IR into the scratch folder {path.parent} "
                           f"({ov_error_reason(exc)}; {free}): free some space, or set TMPDIR to a folder on a "
                           "disk with room") from None


def _move(src: Path, dst: Path) -> None:
    """`src` onto `dst` (the safe writer's temporary file): one rename on the same filesystem,
    a copy across filesystems (the scratch folder is under $TMPDIR)."""
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copyfile(src, dst)


def read_weights_record(xml: str | os.PathLike) -> dict[str, str] | None:
    """The {bytes, sha256} of the .bin `xml` was written with, from its rt_info; None for an IR
    without the record (another tool's) or an .xml that does not parse (OpenVINO's reader then
    says what is wrong)."""
    try:
        for _, element in ElementTree.iterparse(os.fspath(xml), events=("end",)):
            if element.tag == IR_WEIGHTS_RECORD:
                return {child.tag: child.get("value", "") for child in element}
    except (ElementTree.ParseError, OSError):
        return None
    return None


def check_ir_weights(xml: str | os.PathLike) -> None:
    """A one-line TinyvimError when the .bin beside `xml` is not the one `xml` was written with
    (size first, then sha256); nothing for a pair that matches or an IR without the record."""
    record = read_weights_record(xml)
    if record is None:
        return
    binary = weights_path(xml)
    size = binary.stat().st_size
    digest = file_sha256(binary) if str(size) == record.get("bytes") else None
    if digest is not None and digest == record.get("sha256"):
        return
    found = f"{size} bytes" if digest is None else f"sha256 {digest[:12]}…"
    wanted = f"{record.get('bytes', '?')} bytes" if digest is None else f"sha256 {record.get('sha256', '?')[:12]}…"
    raise TinyvimError(f"{binary} is not the weights file {Path(xml).name} was written with ({found}, the .xml "
                       f"records {wanted}): export the IR again, or put its own {binary.name} beside it")


def export_ir(output: str | os.PathLike, model: ModelSpec = ModelSpec(), inputs: InputSpec = InputSpec(), *,
              compress_to_fp16: bool = False, scan: ScanFlavour = PORTABLE_SCAN, **export_kwargs):
    """`export_onnx` to a scratch folder, then `save_ir` to `output` (.xml). Returns the ONNX
    export's ExportResult with path, metadata and size (.xml + .bin) of the IR."""
    xml, _ = check_ir_outputs(output)
    import_optional("openvino")        # before the minutes of tracing
    extension = ir_extension() if scan != PORTABLE_SCAN else None
    with scratch_directory("tinyvim-ir-") as tmp:
        result = onnx_export.export_onnx(tmp / "model.onnx", model, inputs, scan=scan,   # looked up when called
                                         **export_kwargs)
        log = export_kwargs.get("log") or (lambda m: None)
        log(f"converting to OpenVINO IR{' (weights compressed to fp16)' if compress_to_fp16 else ''}")
        xml, binary = save_ir(result.path, xml, result.metadata, compress_to_fp16=compress_to_fp16,
                              extension=extension)
    return replace(result, path=xml, metadata=ir_metadata(result.metadata, compress_to_fp16),
                   size_bytes=xml.stat().st_size + binary.stat().st_size)
