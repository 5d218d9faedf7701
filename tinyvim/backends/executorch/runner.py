"""ExecuTorch runner: a .pte (`tinyvim export --fmt executorch`) through ExecuTorch's Python
runtime (the same C++ runtime and XNNPACK kernels a phone app links), on this CPU; `threads`
sizes ExecuTorch's threadpool while active."""
from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Mapping, Sequence

from tinyvim.backends.base import BaseRunner
from tinyvim.errors import TinyvimError, error_reason
from tinyvim.lazy import import_optional, lazy_import

np = lazy_import("numpy")
torch = lazy_import("torch")


def load_program(path: str | os.PathLike):
    """An executorch.runtime Program; ExecuTorch's cpuinfo probe prints to stderr on x86: kept out."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        runtime = import_optional("executorch.runtime")
        try:
            return runtime.Runtime.get().load_program(os.fspath(path))
        except Exception as exc:  # noqa: BLE001 - the runtime raises RuntimeError / ValueError texts
            raise TinyvimError(f"{path}: ExecuTorch could not load the program ({error_reason(exc, 200)})") from None


class ExecutorchRunner(BaseRunner):
    def __init__(self, path: str | os.PathLike, *, threads: int | None = None,
                 output_names: Sequence[str] = ("logits",), input_names: Sequence[str] = ("images",),
                 name: str = "executorch"):
        super().__init__(name)
        self.path = os.fspath(path)
        self.threads = threads
        self._inputs = list(input_names)
        self._outputs = list(output_names)
        self._method = None
        self._saved_threads: int | None = None

    def activate_impl(self) -> None:
        # XNNPACK runs on ExecuTorch's own threadpool (sized from the CPU count), not torch's: its
        # size is set through the pybindings' reset call, the one the Python runtime offers. The
        # reset frees the old pool and a loaded method's XNNPACK delegate keeps a pointer to the
        # pool it was loaded with: reset first, then load (the other order aborts the process in
        # glibc's mutex code on the first run after the reset).
        if self.threads:
            pool = import_optional("executorch.extension.pybindings.portable_lib")
            self._saved_threads = pool._threadpool_get_thread_count()
            pool._unsafe_reset_threadpool(int(self.threads))
        self._method = load_program(self.path).load_method("forward")

    def deactivate_impl(self) -> None:
        self._method = None
        if self._saved_threads:
            import_optional("executorch.extension.pybindings.portable_lib")._unsafe_reset_threadpool(
                self._saved_threads)
            self._saved_threads = None

    def infer_impl(self, feed: Mapping[str, np.ndarray]):
        args = [torch.from_numpy(np.ascontiguousarray(feed[n], dtype=np.float32)) for n in self._inputs]
        start = time.perf_counter()
        try:
            result = self._method.execute(args)
        except Exception as exc:  # noqa: BLE001
            raise TinyvimError(f"{self.path}: ExecuTorch failed to run it ({error_reason(exc, 200)})") from None
        compute = time.perf_counter() - start
        if len(result) != len(self._outputs):
            raise TinyvimError(f"{self.path}: the program returned {len(result)} outputs, expected "
                               f"{len(self._outputs)} ({', '.join(self._outputs)})")
        return {n: t.float().numpy().copy() for n, t in zip(self._outputs, result)}, {"compute": compute}
