"""Configure and build the native plugin libraries with CMake, and find them afterwards.

Used by `tinyvim build-plugin`, the build test, the GPU check, and (find_*) by whatever
loads the libraries later (the torch "cuda" scan, build-engine's TensorRT plugin).
The default build folder is a per-user cache (the package may be installed read-only);
TINYVIM_PLUGIN_BUILD_DIR overrides it, and the finders look there too.

Every failure is a one-line PluginError: a missing tool, a bad --tensorrt-root or a build folder
that cannot be made or written exit 2 (bad input, missing dependency) before CMake runs; a
failed configure says CMake's own error (`CMake Error at …: <message>`) and exits 2; a failed
compile says the compiler's first error and exits 1. Both name the log.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

from tinyvim.plugins.cpu_twin import cache_dir
from tinyvim.plugins.errors import PluginError
from tinyvim.plugins.ov_extension import openvino_dev_paths

SOURCE_DIR = Path(__file__).resolve().parent
SUMMARY_NAME = "tinyvim_build_summary.txt"
LOG_NAME = "tinyvim_build.log"

LIB_NAMES = {
    "tinyvim_scan_cpu": "libtinyvim_scan_cpu.so",
    "tinyvim_scan_cpu_fast": "libtinyvim_scan_cpu_fast.so",
    "tinyvim_ov_extension": "libtinyvim_ov_extension.so",
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


def prepare_build_dir(build_dir: Path | str) -> Path:
    """`build_dir` created (parents too) and checked writable, or a one-line PluginError naming
    the folder, why, and where else to build."""
    path = Path(build_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):      # read-only filesystems pass mkdir(exist_ok)
            pass
    except OSError as exc:
        blocker = next((a for a in (path, *path.parents) if os.path.exists(a) and not os.path.isdir(a)), None)
        reason = f"{blocker} is not a folder" if blocker is not None else (exc.strerror or str(exc))
        raise PluginError(f"cannot build in {path}: {reason}: pass --build-dir DIR (or set "
                          "TINYVIM_PLUGIN_BUILD_DIR) to a folder you can write") from None
    return path


@dataclass
class BuildResult:
    build_dir: Path
    built: dict[str, Path] = field(default_factory=dict)     # target -> file
    skipped: dict[str, str] = field(default_factory=dict)    # target -> reason
    log: Path | None = None


def openvino_cmake_dir() -> Path | None:
    """The installed openvino wheel's cmake folder when it ships headers and OpenVINOConfig.cmake."""
    try:
        _, cmake, _, _ = openvino_dev_paths()
    except PluginError:
        return None
    return cmake if (cmake / "OpenVINOConfig.cmake").is_file() else None


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


def _run(cmd: list[str], log, progress: Callable[[str], None] | None) -> tuple[int, list[str]]:
    """Run `cmd`, its output into the log (after the echoed command) and to `progress`;
    returns (exit code, its output lines) - the lines, not the log, are searched for the error."""
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    except OSError as exc:
        raise PluginError(f"cannot run {cmd[0]}: {exc.strerror or exc}") from None
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        log.write(line)
        lines.append(line.rstrip("\n"))
        if progress:
            progress(lines[-1])
    log.flush()
    return proc.wait(), lines


_ERROR_WORD = re.compile(r"\berror\b", re.IGNORECASE)


def first_error(lines: list[str]) -> str:
    """The line of a tool's output that says why it failed: CMake's `CMake Error at …` joined
    with the message under it, else the first line with the word error (a compiler's), else the
    last line."""
    for i, line in enumerate(lines):
        if line.startswith("CMake Error"):
            detail = next((ln.strip() for ln in lines[i + 1:i + 6] if ln.strip()), "")
            return f"{line.strip()} {detail}".strip()
    for line in lines:
        if _ERROR_WORD.search(line):
            return line.strip()
    return lines[-1].strip() if lines else "(no output)"


def build(build_dir: Path | str | None = None, *, tensorrt_root: str | None = None,
          cuda_arch: str | None = None, jobs: int | None = None, cpu_only: bool = False,
          targets: list[str] | None = None,
          progress: Callable[[str], None] | None = None) -> BuildResult:
    """CMake configure + build of tinyvim/plugins into build_dir; raises PluginError."""
    return run_build(prepare_build(build_dir, tensorrt_root=tensorrt_root, cuda_arch=cuda_arch, jobs=jobs,
                                   cpu_only=cpu_only, targets=targets), progress=progress)


@dataclass
class BuildPlan:
    """A checked build: the folder exists and is writable, the tools are found."""
    build_dir: Path
    configure: list[str]
    compile: list[str]
    targets: list[str] = field(default_factory=list)


def prepare_build(build_dir: Path | str | None = None, *, tensorrt_root: str | None = None,
                  cuda_arch: str | None = None, jobs: int | None = None, cpu_only: bool = False,
                  targets: list[str] | None = None) -> BuildPlan:
    """Every check before CMake runs (tools, --tensorrt-root, the build folder made and
    writable); raises PluginError (exit 2)."""
    tools = check_tools(require_cuda=not cpu_only)
    if tensorrt_root and not (Path(tensorrt_root) / "include" / "NvInfer.h").is_file() and \
            not (Path(tensorrt_root) / "NvInfer.h").is_file():
        raise PluginError(f"--tensorrt-root {tensorrt_root}: no include/NvInfer.h there (pass the TensorRT prefix "
                          "that holds include/NvInfer.h)")
    build_dir = prepare_build_dir(build_dir if build_dir else default_build_dir())
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
        configure.append(f"-DTENSORRT_ROOT={os.path.abspath(tensorrt_root)}")
    else:
        configure.append("-UTENSORRT_ROOT")
    configure.append(f"-DTINYVIM_CUDA_ARCH={cuda_arch}" if cuda_arch else "-UTINYVIM_CUDA_ARCH")
    # The OpenVINO extension builds against the installed wheel's OpenVINOConfig.cmake and headers.
    ov_cmake = openvino_cmake_dir()
    configure.append(f"-DOpenVINO_DIR={ov_cmake}" if ov_cmake else "-UOpenVINO_DIR")
    compile_cmd = [tools["cmake"], "--build", str(build_dir), "-j", str(jobs or os.cpu_count() or 2)]
    for t in targets or []:
        compile_cmd += ["--target", t]
    return BuildPlan(build_dir, configure, compile_cmd, list(targets or []))


def run_build(plan: BuildPlan, progress: Callable[[str], None] | None = None) -> BuildResult:
    """Configure and compile a prepared build; what was built and what was skipped (and why)."""
    build_dir, targets = plan.build_dir, plan.targets
    log_path = build_dir / LOG_NAME
    try:
        log = open(log_path, "w")     # noqa: SIM115 - opened here to name the log on OSError; `with log` closes it
    except OSError as exc:
        raise PluginError(f"cannot write the build log {log_path}: {exc.strerror or exc}: pass --build-dir DIR "
                          "(or set TINYVIM_PLUGIN_BUILD_DIR) to a folder you can write") from None
    with log:
        code, lines = _run(plan.configure, log, progress)
        if code != 0:
            raise PluginError(f"CMake configure failed: {first_error(lines)} (log: {log_path})")
        code, lines = _run(plan.compile, log, progress)
        if code != 0:
            raise PluginError(f"build failed: {first_error(lines)} (log: {log_path})", exit_code=1)
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
