"""The OpenVINO extension library (csrc/ov_extension.cpp): the CrossSelectiveScan op, computed
by the fast CPU scan, and its ONNX frontend conversion.

Built against the headers the openvino wheel ships (<site-packages>/openvino/include) and linked
with its libopenvino, found without importing openvino. Built on first use into the plugin cache
like the other CPU libraries (keyed by a hash of the sources, the flags and the OpenVINO path),
or by `tinyvim build-plugin` with CMake (OpenVINOConfig.cmake from the same wheel);
TINYVIM_OV_EXTENSION=<path> overrides both.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from tinyvim.plugins.cpu_fast import FLAGS as FAST_FLAGS
from tinyvim.plugins.cpu_fast import SOURCES as FAST_SOURCES
from tinyvim.plugins.cpu_twin import CSRC, compile_cached
from tinyvim.plugins.errors import PluginError

SOURCES = (CSRC / "ov_extension.cpp", *FAST_SOURCES)
ENV_LIB = "TINYVIM_OV_EXTENSION"
LIB_STEM = "libtinyvim_ov_extension"
BUILD_HINT = "run `tinyvim build-plugin --cpu-only`, or set TINYVIM_OV_EXTENSION to a built library"


def openvino_root() -> Path:
    """The installed openvino package folder (holding include/, cmake/ and libs/ in the wheel),
    or a one-line PluginError."""
    spec = importlib.util.find_spec("openvino")
    if spec is None or not spec.submodule_search_locations:
        raise PluginError("cannot build the OpenVINO extension: openvino is not installed "
                          "(pip install 'tinyvim[openvino]')")
    return Path(list(spec.submodule_search_locations)[0])


def openvino_dev_paths() -> tuple[Path, Path, Path, Path | None]:
    """(include dir, cmake dir, libopenvino.so.*, libtbb.so.* or None) of the installed wheel, or
    a one-line PluginError saying which required part is missing."""
    root = openvino_root()
    include, cmake, libs = root / "include", root / "cmake", root / "libs"
    if not (include / "openvino" / "core" / "extension.hpp").is_file():
        raise PluginError(f"cannot build the OpenVINO extension: no OpenVINO C++ headers in {include} "
                          "(the openvino wheel ships them from 2024 on: pip install -U openvino)")
    lib = sorted(libs.glob("libopenvino.so*")) if libs.is_dir() else []
    if not lib:
        raise PluginError(f"cannot build the OpenVINO extension: no libopenvino.so in {libs}")
    # TBB: the CPU plugin's threading library, shipped in the wheel with its headers; with it the
    # scan runs its tasks on the plugin's TBB workers (csrc/cross_scan_cpu_fast.cpp,
    # TINYVIM_SCAN_TBB), without it on threads of its own (same results, slower inside OpenVINO)
    tbb = sorted(libs.glob("libtbb.so.*"))
    has_tbb = bool(tbb) and (include / "tbb" / "parallel_for.h").is_file()
    return include, cmake, lib[0], tbb[0] if has_tbb else None


def build_extension(out_dir: Path | None = None) -> Path:
    """Compile the extension (if not already cached) and return the .so path."""
    include, _, lib, tbb = openvino_dev_paths()
    # -isystem: OpenVINO's headers must not trip our -Werror; the rpath finds libopenvino in the wheel
    flags = [*FAST_FLAGS, *(["-DTINYVIM_SCAN_TBB"] if tbb else []), "-isystem", str(include)]
    libs = (f"-L{lib.parent}", f"-l:{lib.name}", *([f"-l:{tbb.name}"] if tbb else []), f"-Wl,-rpath,{lib.parent}")
    return compile_cached(LIB_STEM, SOURCES, flags, out_dir, what="the OpenVINO extension", libs=libs)


def extension_library() -> Path:
    """$TINYVIM_OV_EXTENSION, else the cached build (built now if needed); a one-line
    PluginError when neither can be had."""
    env = os.environ.get(ENV_LIB)
    if env:
        if Path(env).is_file():
            return Path(env)
        raise PluginError(f"{ENV_LIB}={env}: no such file ({BUILD_HINT})")
    return build_extension()
