"""What a PyTorch archive says about itself: a .pt2 (torch.export ExportedProgram or AOTInductor
package: both zip archives with the .pt2 suffix, told apart by their entries) or a .torchscript,
its tinyvim metadata read straight from the zip (no model is loaded to read it)."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

from tinyvim.backends.model_file import ModelInfo, info_from_metadata
from tinyvim.contract import ARTIFACT_METADATA_NAME
from tinyvim.errors import TinyvimError
from tinyvim.export.torch_program import parse_metadata_text

#: an AOTInductor package holds its compiled model under <archive>/data/aotinductor/
AOTI_MARKER = "/data/aotinductor/"
#: largest metadata entry read (the real one is under 1 KiB)
MAX_METADATA_BYTES = 1 << 16


def _open(path: str | os.PathLike) -> zipfile.ZipFile:
    p = Path(path)
    if not p.is_file():
        raise TinyvimError(f"{p}: no such file" if not p.exists() else f"{p}: not a regular file")
    try:
        return zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as exc:
        raise TinyvimError(f"{p} is not a PyTorch archive ({exc})") from None


def archive_metadata_text(archive: zipfile.ZipFile) -> bytes | None:
    """The extra file ARTIFACT_METADATA_NAME of a torch.export / TorchScript archive, if any."""
    for entry in archive.infolist():
        if entry.filename.endswith(f"/extra/{ARTIFACT_METADATA_NAME}") and entry.file_size <= MAX_METADATA_BYTES:
            return archive.read(entry)
    return None


def is_aoti_package(archive: zipfile.ZipFile) -> bool:
    return any(AOTI_MARKER in name for name in archive.namelist())


def read_pt2_info(path: str | os.PathLike) -> ModelInfo | None:
    """A torch.export ExportedProgram's ModelInfo; None for an AOTInductor package (same suffix:
    the aoti reader takes it)."""
    with _open(path) as archive:
        if is_aoti_package(archive):
            return None
        text = archive_metadata_text(archive)
    return info_from_metadata(path, "pt2", parse_metadata_text(text, source=os.fspath(path)))


def read_torchscript_info(path: str | os.PathLike) -> ModelInfo:
    with _open(path) as archive:
        text = archive_metadata_text(archive)
    return info_from_metadata(path, "torchscript", parse_metadata_text(text, source=os.fspath(path)))


def read_aoti_info(path: str | os.PathLike) -> ModelInfo:
    """An AOTInductor package's ModelInfo: its metadata is compiled into the package's model
    (inductor config aot_inductor.metadata); read through torch's package loader."""
    with _open(path) as archive:
        if not is_aoti_package(archive):
            raise TinyvimError(f"{path} is not an AOTInductor package (no {AOTI_MARKER.strip('/')} in it)")
    loaded = load_aoti(path)
    props = dict(loaded.get_metadata())
    text = props.get(ARTIFACT_METADATA_NAME)
    return info_from_metadata(path, "aoti", parse_metadata_text(text, source=os.fspath(path)))


def load_aoti(path: str | os.PathLike):
    import torch._inductor      # torch's AOTInductor loader lives in a submodule torch does not import itself
    try:
        return torch._inductor.aoti_load_package(os.fspath(path))
    except Exception as exc:  # noqa: BLE001 - loader errors come in many types
        raise TinyvimError(f"{path}: torch could not load the AOTInductor package "
                           f"({str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__})"
                           ) from None
