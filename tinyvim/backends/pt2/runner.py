"""Runner for a loaded PyTorch artifact (an ExportedProgram's module, a TorchScript module, an
AOTInductor model): float32 images in, the recorded outputs back, torch's intra-op threads set
while active. Nothing of tinyvim's model code runs: the artifact holds the whole computation."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from tinyvim.backends.torch.runner import TorchRunner
from tinyvim.backends.pt2.model_file import load_aoti
from tinyvim.contract import ARTIFACT_METADATA_NAME
from tinyvim.errors import TinyvimError, error_reason
from tinyvim.lazy import lazy_import

np = lazy_import("numpy")
torch = lazy_import("torch")


def load_exported_program(path: str | os.PathLike) -> Callable:
    try:
        return torch.export.load(os.fspath(path), extra_files={ARTIFACT_METADATA_NAME: ""}).module()
    except Exception as exc:  # noqa: BLE001 - deserialization errors come in many types
        raise TinyvimError(f"{path}: torch.export.load failed ({error_reason(exc, 200)})") from None


def load_torchscript(path: str | os.PathLike) -> Callable:
    try:
        return torch.jit.load(os.fspath(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise TinyvimError(f"{path}: torch.jit.load failed ({error_reason(exc, 200)})") from None


#: file kind -> how its artifact is loaded into a callable
LOADERS: dict[str, Callable[[str], Callable]] = {"pt2": load_exported_program, "torchscript": load_torchscript,
                                                 "aoti": load_aoti}


class ArtifactRunner(TorchRunner):
    """TorchRunner's threads and calls on an artifact loaded by torch alone (no eval()/float():
    an exported module refuses train/eval switches, an AOTInductor model is no nn.Module)."""

    def __init__(self, path: str | os.PathLike, kind: str, *, threads: int | None = None,
                 output_names: Sequence[str] = ("logits",), name: str = "pt2"):
        self.path = os.fspath(path)
        self.kind = kind
        super().__init__(lambda: LOADERS[kind](self.path), threads=threads, output_names=output_names, name=name)

    def activate_impl(self) -> None:
        self._saved_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(int(self.threads))
        self._model = self._source()
