"""The one way tinyvim imports an optional dependency (onnxruntime, openvino, tensorrt,
polygraphy, matplotlib, ...) at the moment it is needed, with a one-line error naming the
package to install when it is missing; and the one way a heavy package (torch, onnx, numpy)
is deferred until it is used (`lazy_import`), so that parsing a command's options loads none.

How to install each optional dependency is declared here, once."""
from __future__ import annotations

import contextlib
import importlib
import signal
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from tinyvim.errors import TinyvimError

#: top-level module -> (what it is called in messages, how to install it)
OPTIONAL = {
    "onnxruntime": ("onnxruntime", "pip install 'tinyvim[cpu]' (or 'tinyvim[gpu]' for onnxruntime-gpu)"),
    "openvino": ("OpenVINO", "pip install 'tinyvim[openvino]' (the openvino package from PyPI)"),
    "tensorrt": ("TensorRT", "install it on a machine with an NVIDIA GPU from NVIDIA's package index (pip install "
                             "tensorrt-cu12, or the TensorRT tarball / NGC container) - it cannot be installed from "
                             "PyPI alone"),
    "polygraphy": ("Polygraphy", "pip install polygraphy (or pip install 'tinyvim[tensorrt]')"),
    "matplotlib": ("matplotlib", "pip install 'tinyvim[plot]'"),
    "onnxruntime_extensions": ("onnxruntime-extensions", "pip install onnxruntime-extensions (or export with "
                                                         "--scan portable)"),
    "onnx_graphsurgeon": ("onnx-graphsurgeon", "pip install onnx-graphsurgeon"),
    "tritonclient": ("tritonclient", "pip install 'tinyvim[serve]'"),
    "executorch": ("ExecuTorch", "pip install 'tinyvim[executorch]'"),
}


def import_optional(module: str, install: str | None = None, *, what: str | None = None) -> ModuleType:
    """`module` imported, or TinyvimError("<what> is not installed (...): <install>").

    install / what default to OPTIONAL's entry for the module's top-level package. An OSError
    while importing (a binding whose native libraries do not load, like tensorrt without
    libnvinfer) is said as such."""
    name, hint = OPTIONAL.get(module.split(".")[0], (module.split(".")[0], f"pip install {module.split('.')[0]}"))
    name, hint = what or name, install or hint
    with _noting_sigint() as interrupted:
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            if interrupted or _caused_by_interrupt(exc):
                # Ctrl-C during a native module's initialisation: pybind11 turns the
                # KeyboardInterrupt into an ImportError, which is not "not installed"
                raise KeyboardInterrupt from exc
            raise TinyvimError(f"{name} is not installed ({exc}): {hint}") from exc
        except OSError as exc:
            raise TinyvimError(f"{name} is installed but its libraries do not load ({exc}): {hint}") from exc


@contextlib.contextmanager
def _noting_sigint() -> Iterator[list[int]]:
    """While inside, a SIGINT is recorded (then handled as before): an import that fails after
    one was interrupted, whatever the exception says."""
    seen: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):      # SIG_IGN / SIG_DFL: nothing reaches Python to note
        yield seen
        return

    def note(signum, frame):
        seen.append(signum)
        previous(signum, frame)

    signal.signal(signal.SIGINT, note)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


def _caused_by_interrupt(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class LazyModule:
    """A module that is imported when one of its attributes is first read (Polygraphy's
    `mod.lazy_import`): `np = lazy_import("numpy")` at module top costs nothing, `np.zeros`
    imports numpy. Heavy packages (torch, onnx, onnxscript, numpy) and the project's own
    torch-defined packages (tinyvim.model, tinyvim.ops) are reached this way from the layers
    a command imports to parse its options, so that `--help` and a bad-input error start in
    well under half a second (tests/test_structure.py holds which modules load then)."""

    __slots__ = ("_name", "_module")

    def __init__(self, name: str):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_module", None)

    def _load(self) -> ModuleType:
        module = object.__getattribute__(self, "_module")
        if module is None:
            name = object.__getattribute__(self, "_name")
            module = import_optional(name) if name.split(".")[0] in OPTIONAL else importlib.import_module(name)
            object.__setattr__(self, "_module", module)
        return module

    def __getattr__(self, attr: str):
        return getattr(self._load(), attr)

    def __setattr__(self, attr: str, value) -> None:      # monkeypatching in tests reaches the module
        setattr(self._load(), attr, value)

    def __delattr__(self, attr: str) -> None:
        delattr(self._load(), attr)

    def __dir__(self):
        return dir(self._load())

    def __repr__(self) -> str:
        name = object.__getattribute__(self, "_name")
        state = "loaded" if object.__getattribute__(self, "_module") is not None else "not loaded yet"
        return f"<lazy module {name!r} ({state})>"


def lazy_import(name: str) -> Any:
    """`name` as a LazyModule: imported (through import_optional for an optional dependency,
    with its one-line install hint) on the first attribute read."""
    return LazyModule(name)
