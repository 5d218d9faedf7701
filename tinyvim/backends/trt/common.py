"""TensorRT facts shared by the engine builder and the engine runner.

Pure Python (no tensorrt, no CUDA), unit-tested everywhere: versions, the engine sidecar.
Needing TensorRT: `import_tensorrt`, `import_polygraphy`, `register_plugin_library` (the scan
plugin through IPluginRegistry::loadLibrary), `polygraphy_messages`, `gpu_info`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Callable

from tinyvim.contract import (
    COMPUTE_PRECISIONS,
    INPUT_NAME,
    MAX_BATCH,
    MAX_IMAGE_SIDE,
    SCAN_PLUGIN,
)
from tinyvim.errors import TinyvimError
from tinyvim.lazy import OPTIONAL, import_optional
from tinyvim.plugins import find_plugin_library
from tinyvim.utils import file_sha256 as sha256_file  # noqa: F401  (used by build and validate)

MIN_TRT_MAJOR = 10
SIDECAR_VERSION = 1

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
    if not os.path.isfile(path):
        raise TinyvimError(f"plugin library {path} does not exist: build it with `tinyvim build-plugin "
                           "--tensorrt-root <TensorRT prefix>` and pass it with --plugin")
    spec = SCAN_PLUGIN
    registry: "trt.IPluginRegistry" = trt.get_plugin_registry()
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
    try:
        import torch
    except ImportError as exc:
        raise TinyvimError("PyTorch is needed to query the GPU") from exc
    if not torch.cuda.is_available():
        raise TinyvimError("no CUDA GPU is available: TensorRT engines are built and run on an NVIDIA GPU "
                           "(and this PyTorch must be a CUDA build)")
    idx = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(idx)
    return {"name": torch.cuda.get_device_name(idx), "compute_capability": f"{major}.{minor}"}


# --------------------------------------------------------------------- sidecar
def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """`model.engine` -> `model.engine.json`."""
    return Path(os.fspath(engine_path) + ".json")


def make_sidecar(*, tinyvim_version: str, trt_version: str, gpu: dict, precision: str,
                 profiles: list[dict], onnx_path: str, onnx_sha256: str, onnx_metadata: dict,
                 build_seconds: float, strongly_typed: bool, plugin: str | None, tf32: bool = False,
                 commands: dict | None = None) -> dict:
    """The JSON document written next to an engine. `profiles`: [{input: {min, opt, max}}].
    `onnx_metadata` carries the ONNX's tinyvim metadata so that `validate` can rebuild the
    PyTorch reference from an engine alone; `commands`, the equivalent trtexec / polygraphy
    command lines."""
    return {
        "sidecar_version": SIDECAR_VERSION,
        "tinyvim_version": tinyvim_version,
        "tensorrt_version": trt_version,
        "gpu_name": gpu["name"],
        "compute_capability": gpu["compute_capability"],
        "precision": precision,
        "strongly_typed": strongly_typed,
        "profiles": profiles,
        "onnx": {"path": onnx_path, "sha256": onnx_sha256},
        "onnx_metadata": dict(onnx_metadata),
        "tf32": bool(tf32),
        "plugin": plugin,
        "build_seconds": round(float(build_seconds), 3),
        "commands": dict(commands or {}),
    }


#: a sidecar is a few KiB; anything far larger is not one (and is not read into memory)
MAX_SIDECAR_BYTES = 1 << 20


def _is_text(v) -> bool:
    return isinstance(v, str) and len(v) <= 4096 and "\x00" not in v


def _is_version(v) -> bool:
    if not _is_text(v):
        return False
    try:
        version_tuple(v)
    except ValueError:
        return False
    return True


def _shape_problem(shape) -> str | None:
    if not isinstance(shape, list) or len(shape) != 4 or \
            not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        return f"{str(shape)[:60]} is not a list of 4 integers [B, 3, H, W]"
    b, c, h, w = shape
    if not 1 <= b <= MAX_BATCH or c != 3 or not 1 <= h <= MAX_IMAGE_SIDE or not 1 <= w <= MAX_IMAGE_SIDE:
        return f"{shape} is outside [1..{MAX_BATCH}, 3, 1..{MAX_IMAGE_SIDE}, 1..{MAX_IMAGE_SIDE}]"
    return None


def _profiles_problem(profiles) -> str | None:
    if not isinstance(profiles, list) or not profiles or len(profiles) > 64:
        return "must be a non-empty list of optimisation profiles"
    for i, profile in enumerate(profiles):
        if not isinstance(profile, dict) or INPUT_NAME not in profile:
            return f"profile {i} must map the input {INPUT_NAME!r} to its min/opt/max shapes"
        for name, shapes in profile.items():
            if not isinstance(shapes, dict) or set(shapes) != {"min", "opt", "max"}:
                return f"profile {i} input {str(name)[:40]!r} must have exactly min, opt and max"
            for key in ("min", "opt", "max"):
                problem = _shape_problem(shapes[key])
                if problem:
                    return f"profile {i} {key} shape {problem}"
            if not all(lo <= mid <= hi for lo, mid, hi in zip(shapes["min"], shapes["opt"], shapes["max"])):
                return f"profile {i} shapes are not ordered min <= opt <= max"
    return None


#: The sidecar schema as the reading side relies on it: key -> (check, what it must be).
#: Unknown keys are ignored (a newer writer may add some); tests hold make_sidecar to it.
SIDECAR_SCHEMA = {
    "sidecar_version": (lambda v: v == SIDECAR_VERSION and not isinstance(v, bool), f"the integer {SIDECAR_VERSION}"),
    "tinyvim_version": (_is_text, "a text"),
    "tensorrt_version": (_is_version, "a version such as 10.3.0"),
    "gpu_name": (_is_text, "a text"),
    "compute_capability": (lambda v: isinstance(v, str) and re.fullmatch(r"\d{1,2}\.\d{1,2}", v) is not None,
                           "a compute capability such as 9.0"),
    "precision": (lambda v: v in COMPUTE_PRECISIONS, f"one of {', '.join(COMPUTE_PRECISIONS)}"),
    "strongly_typed": (lambda v: isinstance(v, bool), "true or false"),
    "profiles": (lambda v: _profiles_problem(v) is None, "a list of {input: {min, opt, max}} profiles"),
    "onnx": (lambda v: isinstance(v, dict) and _is_text(v.get("path")) and isinstance(v.get("sha256"), str)
             and re.fullmatch(r"[0-9a-f]{64}", v["sha256"]) is not None, "{path: text, sha256: 64 hex digits}"),
    "onnx_metadata": (lambda v: isinstance(v, dict) and len(v) <= 64
                      and all(_is_text(k) and _is_text(x) for k, x in v.items()), "a map of texts"),
    "plugin": (lambda v: v is None or _is_text(v), "a path or null"),
    "build_seconds": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                      and v >= 0, "a finite number of seconds >= 0"),
}


def sidecar_problems(sidecar) -> list[str]:
    """What is wrong with a sidecar document by SIDECAR_SCHEMA (empty when nothing)."""
    if not isinstance(sidecar, dict):
        return [f"it holds a JSON {type(sidecar).__name__}, not an object"]
    problems = []
    for key, (ok, meaning) in SIDECAR_SCHEMA.items():
        if key not in sidecar:
            problems.append(f"{key} is missing")
        elif not ok(sidecar[key]):
            detail = _profiles_problem(sidecar[key]) if key == "profiles" else None
            problems.append(f"{key} must be {meaning}" + (f" ({detail})" if detail else ""))
    return problems


def read_sidecar(engine_path: str | os.PathLike) -> dict:
    """The engine's JSON sidecar, checked against SIDECAR_SCHEMA before anything trusts it;
    one-line TinyvimError naming the first problem otherwise."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise TinyvimError(f"{path} not found: engines are described by the JSON sidecar "
                           "`tinyvim build-engine` writes next to them; rebuild the engine")
    try:
        size = path.stat().st_size
        if size > MAX_SIDECAR_BYTES:
            raise TinyvimError(f"{path} is {size:,} bytes, not an engine sidecar (a few KiB): rebuild the engine")
        sidecar = json.loads(path.read_bytes().decode("utf-8"))
    except TinyvimError:
        raise
    except (OSError, ValueError, RecursionError) as exc:   # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise TinyvimError(f"{path} is not a valid engine sidecar ({reason}): rebuild the engine") from None
    problems = sidecar_problems(sidecar)
    if problems:
        raise TinyvimError(f"{path} is not a valid engine sidecar ({problems[0]}"
                           f"{f'; +{len(problems) - 1} more' if len(problems) > 1 else ''}): rebuild the engine")
    return sidecar


def check_sidecar(sidecar: dict, *, trt_version: str, gpu: dict) -> tuple[list[str], list[str]]:
    """(errors, warnings) of running an engine described by `sidecar` here.

    Errors: a different TensorRT version or GPU compute capability (the engine's kernels and
    format would not load or run). Warning: same capability, another GPU model (it runs, but
    tactics were timed on the other card)."""
    errors, warnings = [], []
    problems = sidecar_problems(sidecar)
    if problems:
        return [f"engine sidecar is invalid ({'; '.join(problems[:3])}): rebuild the engine"], []
    built = sidecar["tensorrt_version"]
    if not same_build_version(built, trt_version):
        errors.append(f"engine was built with TensorRT {built} but TensorRT {trt_version} is installed: "
                      "rebuild it with `tinyvim build-engine` on this machine")
    if sidecar["compute_capability"] != gpu["compute_capability"]:
        errors.append(f"engine was built for {sidecar['gpu_name']} (compute capability "
                      f"{sidecar['compute_capability']}) but this GPU is {gpu['name']} "
                      f"(compute capability {gpu['compute_capability']}): rebuild it on this GPU")
    elif sidecar["gpu_name"] != gpu["name"]:
        warnings.append(f"engine was built on {sidecar['gpu_name']}, running on {gpu['name']} "
                        "(same compute capability): it runs, but rebuild for best performance")
    return errors, warnings
