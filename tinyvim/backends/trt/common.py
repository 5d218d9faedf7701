"""TensorRT facts shared by the engine builder and the engine runner.

Pure Python (no tensorrt, no CUDA), unit-tested everywhere: versions (the engine's sidecar is
sidecar.py).
Needing TensorRT: `import_tensorrt`, `import_polygraphy`, `register_plugin_library` (the scan
plugin through IPluginRegistry::loadLibrary), `polygraphy_messages`, `gpu_info`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable


from tinyvim.contract import (
    SCAN_PLUGIN,
)
from tinyvim.errors import TinyvimError
from tinyvim.lazy import OPTIONAL, import_optional, lazy_import
from tinyvim.plugins import find_plugin_library

torch = lazy_import("torch")

MIN_TRT_MAJOR = 10

INSTALL_HINT = OPTIONAL["tensorrt"][1]


# --------------------------------------------------------------------- versions
def version_tuple(version: str) -> tuple[int, ...]:
    """'10.3.0.26' -> (10, 3, 0, 26); trailing text such as '10.0.0b6' or '+cuda12' is ignored."""
    parts = []
    for piece in str(version).split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
        if m.end() != len(piece):
            break
    if not parts:
        raise ValueError(f"not a version string: {version!r}")
    return tuple(parts)


def version_at_least(version: str, minimum: str) -> bool:
    """Numeric comparison, missing components count as 0 ('10' >= '10.0.0')."""
    a, b = version_tuple(version), version_tuple(minimum)
    n = max(len(a), len(b))
    return a + (0,) * (n - len(a)) >= b + (0,) * (n - len(b))


def same_build_version(built: str, running: str) -> bool:
    """A TensorRT engine (without the version-compatible flag) loads only in the exact
    TensorRT major.minor.patch it was built with; the 4th (build) component may differ."""
    return version_tuple(built)[:3] == version_tuple(running)[:3]


def trt_major(version: str) -> int:
    """'10.16.0.72' -> 10."""
    return version_tuple(version)[0]


def check_trt_version(version: str) -> None:
    if not version_at_least(version, str(MIN_TRT_MAJOR)):
        raise TinyvimError(f"TensorRT {version} is too old: tinyvim needs TensorRT >= {MIN_TRT_MAJOR} "
                           f"(IPluginV3 scan plugin, named-tensor API); {INSTALL_HINT}")


# --------------------------------------------------------------------- lazy imports
def import_tensorrt():
    """The tensorrt module (>= 10), or a one-line TinyvimError saying how to get it."""
    trt = import_optional("tensorrt")   # an OSError (bindings without libnvinfer) is said as such
    check_trt_version(trt.__version__)
    return trt


def import_polygraphy():
    """polygraphy.backend.trt (NVIDIA's TensorRT loaders, which build-engine goes through), or
    a one-line TinyvimError."""
    return import_optional("polygraphy.backend.trt")


@contextlib.contextmanager
def polygraphy_messages(log: Callable[[str], None]):
    """While active, Polygraphy's messages - and TensorRT's, which Polygraphy's TensorRT logger
    forwards - go to `log` from warnings up (not to stdout, where our summary goes), and the
    errors are collected in the yielded list, to be quoted in a one-line failure."""
    from polygraphy.logger import G_LOGGER

    errors: list[str] = []

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = re.sub(r"^\[[A-Z!]\]\s*", "", record.getMessage().strip())
            if record.levelno >= logging.ERROR:
                errors.append(" ".join(text.split()))
            log(f"[polygraphy] {text}")

    sink = logging.getLogger("Polygraphy")
    saved = (G_LOGGER.use_python_logging_system, G_LOGGER.module_severity, G_LOGGER.colors, sink.propagate,
             sink.level)
    handler = Forward(logging.WARNING)
    G_LOGGER.use_python_logging_system = True
    G_LOGGER.module_severity = G_LOGGER.WARNING
    G_LOGGER.colors = False
    sink.addHandler(handler)
    sink.propagate = False
    sink.setLevel(logging.WARNING)
    try:
        yield errors
    finally:
        sink.removeHandler(handler)
        G_LOGGER.use_python_logging_system, G_LOGGER.module_severity, G_LOGGER.colors = saved[:3]
        sink.propagate = saved[3]
        sink.setLevel(saved[4])


def default_plugin_path() -> str:
    """Path of the scan plugin library that `tinyvim build-plugin` built (or $TINYVIM_TRT_PLUGIN)."""
    return os.fspath(find_plugin_library())


#: plugin libraries registered in this process: path -> loadLibrary's handle (None: the
#: creator was registered already, by other means)
_registered: dict[str, object] = {}


def check_plugin_file(path: str | os.PathLike) -> str:
    """The absolute path of a plugin library that exists, else the one-line error; needs no
    TensorRT, so commands check it before TensorRT is imported."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise TinyvimError(f"plugin library {path} does not exist: build it with `tinyvim build-plugin "
                           "--tensorrt-root <TensorRT prefix>` and pass it with --plugin")
    return path


def register_plugin_library(trt, path: str | os.PathLike) -> str:
    """Register the scan plugin with TensorRT's plugin registry the way TensorRT discovers a
    plugin library: IPluginRegistry::loadLibrary, which calls the library's setLoggerFinder and
    getCreators. Must run before parsing an ONNX with CrossSelectiveScan nodes and before
    deserializing an engine built with them. One-line TinyvimError for a missing file, a
    library TensorRT refuses (an old build without getCreators, or one built for another
    TensorRT) or one without the creator the contract names. Returns the absolute path."""
    path = os.path.abspath(os.fspath(path))
    if path in _registered:
        return path
    check_plugin_file(path)
    spec = SCAN_PLUGIN
    registry: trt.IPluginRegistry = trt.get_plugin_registry()
    handle = None
    if registry.get_creator(spec.op_type, spec.version, spec.namespace) is None:
        handle = registry.load_library(path)
        if handle is None:
            raise TinyvimError(f"TensorRT {trt.__version__} refused the plugin library {path} (see its message "
                               "above): rebuild it with `tinyvim build-plugin --tensorrt-root <this TensorRT>` "
                               "(an old build without getCreators, or one for another TensorRT, does not load)")
        if registry.get_creator(spec.op_type, spec.version, spec.namespace) is None:
            raise TinyvimError(f"{path} does not provide plugin {spec.op_type} version {spec.version} in namespace "
                               f"{spec.namespace!r}: rebuild it with `tinyvim build-plugin`")
    _registered[path] = handle
    return path


def gpu_info() -> dict:
    """{'name', 'compute_capability' 'M.m'} of the current CUDA device, or a clear error."""
    if not torch.cuda.is_available():
        raise TinyvimError("no CUDA GPU is available: TensorRT engines are built and run on an NVIDIA GPU "
                           "(and this PyTorch must be a CUDA build)")
    idx = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(idx)
    return {"name": torch.cuda.get_device_name(idx), "compute_capability": f"{major}.{minor}"}


