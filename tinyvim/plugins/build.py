"""Configure and build the native plugin libraries with CMake, and find them afterwards.

Used by `tinyvim build-plugin`, the build test, the GPU check, and (find_*) by whatever
loads the libraries later (the torch "cuda" scan, build-engine's TensorRT plugin).
The default build folder is a per-user cache (the package may be installed read-only);
TINYVIM_PLUGIN_BUILD_DIR overrides it, and the finders look there too.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tinyvim.plugins.cpu_twin import cache_dir
from tinyvim.plugins.errors import PluginError

SOURCE_DIR = Path(__file__).resolve().parent
SUMMARY_NAME = "tinyvim_build_summary.txt"
LOG_NAME = "tinyvim_build.log"

LIB_NAMES = {
    "tinyvim_scan_cpu": "libtinyvim_scan_cpu.so",
    "tinyvim_scan_cuda": "libtinyvim_scan_cuda.so",
    "tinyvim_trt_plugin": "libtinyvim_trt_plugin.so",
}
PLUGIN_NOT_FOUND = ("TensorRT plugin library not found: run `tinyvim build-plugin` "
                    "(needs TensorRT headers, set TENSORRT_ROOT)")
CUDA_LIB_NOT_FOUND = ("CUDA scan library not found: run `tinyvim build-plugin` "
                      "(needs nvcc), or set TINYVIM_SCAN_CUDA_LIB")


def default_build_dir() -> Path:
    env = os.environ.get("TINYVIM_PLUGIN_BUILD_DIR")
    return Path(env) if env else cache_dir() / "build"


@dataclass
class BuildResult:
    build_dir: Path
    built: dict[str, Path] = field(default_factory=dict)     # target -> file
    skipped: dict[str, str] = field(default_factory=dict)    # target -> reason
    log: Path | None = None


def find_nvcc() -> str | None:
    for cand in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def check_tools(require_cuda: bool = True) -> dict[str, str]:
    """Paths of cmake, the C++ compiler and nvcc; PluginError naming what is missing."""
    tools = {"cmake": shutil.which("cmake")}
    cxx = next((shutil.which(c) for c in (os.environ.get("CXX"), "g++", "c++") if c and shutil.which(c)), None)
    tools["c++"] = cxx
    if require_cuda:
        tools["nvcc"] = find_nvcc()
    missing = [name for name, path in tools.items() if not path]
    if missing:
        hint = {"cmake": "install cmake >= 3.18", "c++": "install g++",
                "nvcc": "install the CUDA toolkit or pass --cpu-only"}
        raise PluginError("cannot build the plugins: " + ", ".join(
            f"{m} not found ({hint[m]})" for m in missing))
    return tools  # type: ignore[return-value]


def parse_summary(build_dir: Path) -> BuildResult:
    result = BuildResult(Path(build_dir))
    summary = Path(build_dir) / SUMMARY_NAME
    if not summary.is_file():
        return result
    for line in summary.read_text().splitlines():
        verb, _, rest = line.partition(" ")
        if verb == "built":
            target, _, path = rest.partition(" ")
            result.built[target] = Path(path.split(" (")[0])
        elif verb == "skipped":
            target, _, reason = rest.partition(": ")
            result.skipped[target] = reason
    return result


def _run(cmd: list[str], log, progress: Callable[[str], None] | None) -> int:
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        if progress:
            progress(line.rstrip("\n"))
    return proc.wait()


def _first_error(log_path: Path) -> str:
    lines = log_path.read_text(errors="replace").splitlines()
    for line in lines:
        if "error" in line.lower() or "Error" in line:
            return line.strip()
    return lines[-1].strip() if lines else "(no output)"


def build(build_dir: Path | str | None = None, *, tensorrt_root: str | None = None,
          cuda_arch: str | None = None, jobs: int | None = None, cpu_only: bool = False,
          targets: list[str] | None = None,
          progress: Callable[[str], None] | None = None) -> BuildResult:
    """CMake configure + build of tinyvim/plugins into build_dir; raises PluginError."""
    tools = check_tools(require_cuda=not cpu_only)
    build_dir = Path(build_dir) if build_dir else default_build_dir()
    build_dir.mkdir(parents=True, exist_ok=True)
    # Every choice is passed (or its cache entry dropped with -U) on each configure, so a
    # reused build folder never keeps a stale setting or a stale TensorRT search result.
    configure = [tools["cmake"], "-S", str(SOURCE_DIR), "-B", str(build_dir),
                 "-DCMAKE_BUILD_TYPE=Release", f"-DCMAKE_CXX_COMPILER={tools['c++']}",
                 "-UTENSORRT_INCLUDE_DIR"]
    if cpu_only:
        configure.append("-DTINYVIM_ENABLE_CUDA=OFF")
    else:
        configure += ["-DTINYVIM_ENABLE_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={tools['nvcc']}"]
    if tensorrt_root:
        if not (Path(tensorrt_root) / "include" / "NvInfer.h").is_file() and \
                not (Path(tensorrt_root) / "NvInfer.h").is_file():
            raise PluginError(f"--tensorrt-root {tensorrt_root}: no include/NvInfer.h there")
        configure.append(f"-DTENSORRT_ROOT={os.path.abspath(tensorrt_root)}")
    else:
        configure.append("-UTENSORRT_ROOT")
    configure.append(f"-DTINYVIM_CUDA_ARCH={cuda_arch}" if cuda_arch else "-UTINYVIM_CUDA_ARCH")
    compile_cmd = [tools["cmake"], "--build", str(build_dir), "-j", str(jobs or os.cpu_count() or 2)]
    for t in targets or []:
        compile_cmd += ["--target", t]
    log_path = build_dir / LOG_NAME
    with open(log_path, "w") as log:
        if _run(configure, log, progress) != 0:
            raise PluginError(f"CMake configure failed: {_first_error(log_path)} (log: {log_path})")
        if _run(compile_cmd, log, progress) != 0:
            raise PluginError(f"build failed: {_first_error(log_path)} (log: {log_path})")
    result = parse_summary(build_dir)
    result.log = log_path
    if targets:
        result.built = {k: v for k, v in result.built.items() if k in targets}
    for name, path in result.built.items():
        if not path.is_file():
            raise PluginError(f"build reported {name} at {path} but the file is missing (log: {log_path})")
    return result


def _find(target: str, env_var: str, not_found: str, build_dir: Path | str | None = None) -> Path:
    env = os.environ.get(env_var)
    if env:
        if Path(env).is_file():
            return Path(env)
        raise PluginError(f"{env_var}={env}: no such file")
    dirs = [Path(build_dir)] if build_dir else []
    dirs += [default_build_dir(), SOURCE_DIR.parents[1] / "build" / "plugins"]
    for d in dirs:
        cand = d / "lib" / LIB_NAMES[target]
        if cand.is_file():
            return cand
    raise PluginError(not_found)


def find_plugin_library(build_dir: Path | str | None = None) -> Path:
    """Path of libtinyvim_trt_plugin.so: $TINYVIM_TRT_PLUGIN, else the build folders.

    Load it into TensorRT before parsing an ONNX model with CrossSelectiveScan nodes or
    deserializing an engine built with it: trt.get_plugin_registry().load_library(str(path))
    (or trtexec --dynamicPlugins=path)."""
    return _find("tinyvim_trt_plugin", "TINYVIM_TRT_PLUGIN", PLUGIN_NOT_FOUND, build_dir)


def find_cuda_library(build_dir: Path | str | None = None) -> Path:
    """Path of libtinyvim_scan_cuda.so: $TINYVIM_SCAN_CUDA_LIB, else the build folders."""
    return _find("tinyvim_scan_cuda", "TINYVIM_SCAN_CUDA_LIB", CUDA_LIB_NOT_FOUND, build_dir)
