"""Runner for a loaded PyTorch artifact (an ExportedProgram's module, a TorchScript module, an
AOTInductor model): float32 images in, the recorded outputs back, torch's intra-op threads set
while active. Nothing of tinyvim's model code runs: the artifact holds the whole computation."""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence

from tinyvim.backends.base import BaseRunner
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


class ArtifactRunner(BaseRunner):
    def __init__(self, path: str | os.PathLike, kind: str, *, threads: int | None = None,
                 output_names: Sequence[str] = ("logits",), input_names: Sequence[str] = ("images",),
                 name: str = "pt2"):
        super().__init__(name)
        self.path = os.fspath(path)
        self.kind = kind
        self.threads = threads
        self._inputs = list(input_names)
        self._outputs = list(output_names)
        self._model = None
        self._saved_threads: int | None = None

    def activate_impl(self) -> None:
        self._saved_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(int(self.threads))
        self._model = LOADERS[self.kind](self.path)

    def deactivate_impl(self) -> None:
        self._model = None
        if self._saved_threads:
            torch.set_num_threads(self._saved_threads)

    def infer_impl(self, feed: Mapping[str, np.ndarray]):
        args = [torch.from_numpy(np.ascontiguousarray(feed[n], dtype=np.float32)) for n in self._inputs]
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                result = self._model(*args)
        except Exception as exc:  # noqa: BLE001 - a shape the artifact was not made for, mostly
            raise TinyvimError(f"{self.path}: running the {self.kind} model failed ({error_reason(exc, 200)})") from None
        compute = time.perf_counter() - start
        tensors = [result] if isinstance(result, torch.Tensor) else list(result)
        if len(tensors) != len(self._outputs):
            raise TinyvimError(f"{self.path}: the model returned {len(tensors)} outputs, expected "
                               f"{len(self._outputs)} ({', '.join(self._outputs)})")
        return {n: t.detach().float().numpy() for n, t in zip(self._outputs, tensors)}, {"compute": compute}
