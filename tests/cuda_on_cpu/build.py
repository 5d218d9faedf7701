"""Compiling the kernel on the CPU runtime, and the TensorRT plugin on top of it; cached by content.

Libraries are cached like the CPU twin's (tinyvim.plugins.cpu_twin.cache_dir(), keyed by a hash of
the kernel's sources, the runtime in csrc/, the rewrite's code, the compiler and its flags), so a
second build is a file lookup.
"""
from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from tinyvim.plugins.cpu_twin import cache_dir, find_compiler
from tinyvim.plugins.errors import PluginError

from . import rewrite

#: the package's CUDA/TensorRT sources, as they are in the repository (a mutation test passes a patched copy)
CSRC = Path(rewrite.__file__).resolve().parents[2] / "tinyvim" / "plugins" / "csrc"
#: our CUDA-on-CPU runtime (stand-ins for cuda_runtime.h, cuda_fp16.h, cuda_bf16.h, cuda_runtime_api.h)
RUNTIME = Path(__file__).resolve().parent / "csrc"
KERNEL_SOURCES = ("cross_scan_kernel.cu", "cross_scan_kernel.cuh", "scan_step.h", "tinyvim_scan.h")
PLUGIN_SOURCES = ("trt_plugin.cpp", "plugin_logic.cpp", "plugin_logic.h", "tinyvim_scan.h")
#: the contract driver (tests/csrc/trt_contract_check.cpp): a test tool, compiled against the same headers
CONTRACT_CHECK = Path(__file__).resolve().parents[1] / "csrc" / "trt_contract_check.cpp"
#: -fno-extern-tls-init: the kernel's `extern __shared__` array and the runtime's threadIdx & co.
#: are thread_locals without dynamic initialisation, so no TLS init wrapper is needed (or emitted).
#: -ffp-contract=off: the arithmetic header writes its fmas explicitly (as the twin is built).
CXXFLAGS = ("-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", "-fno-extern-tls-init", "-ffp-contract=off",
            "-pthread", "-Wall", "-Wno-unknown-pragmas")


def _hash(parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


@functools.cache
def _compiler_version(cxx: str) -> str:
    return subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[0]


def _runtime_files() -> list[Path]:
    return sorted(p for p in RUNTIME.iterdir() if p.is_file())


def _compile(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        errors = [ln for ln in proc.stderr.splitlines() if "error" in ln] or proc.stderr.strip().splitlines()
        raise PluginError(f"building {what} failed: {(errors or ['(no output)'])[0]}")


def _atomic_build(target: Path, build) -> Path:
    """Runs build(tmp_path) and renames the result onto target (concurrent test processes never
    load a half-written file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=target.suffix, dir=target.parent)
    os.close(fd)
    try:
        build(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def runtime_object() -> Path:
    """cuda_on_cpu_runtime-<hash>.o: the runtime compiled once (cached by content) and linked into
    every kernel library, so that the mutation test's fifteen builds compile only their kernel
    (the runtime was half of each build). Each library still holds its own copy of the runtime."""
    cxx = find_compiler()
    key = _hash([cxx, _compiler_version(cxx), *CXXFLAGS, *[p.read_bytes() for p in _runtime_files()]])
    target = cache_dir() / f"cuda_on_cpu_runtime-{key}.o"
    if target.exists():
        return target
    return _atomic_build(target, lambda tmp: _compile(
        [cxx, *CXXFLAGS, "-c", f"-I{RUNTIME}", str(RUNTIME / "cuda_on_cpu_runtime.cpp"), "-o", tmp],
        "the CUDA-on-CPU runtime"))


def build_library(out_dir: Path | None = None, src_dir: Path | None = None) -> Path:
    """libtinyvim_scan_cuda_on_cpu-<hash>.so: the kernel and launcher of src_dir (default: the
    package's csrc) on the runtime; cached by content."""
    src_dir = Path(src_dir) if src_dir else CSRC
    out_dir = Path(out_dir) if out_dir else cache_dir()
    cxx = find_compiler()
    key = _hash([cxx, _compiler_version(cxx), *CXXFLAGS, Path(rewrite.__file__).read_bytes(),
                 *[(src_dir / f).read_bytes() for f in KERNEL_SOURCES], *[p.read_bytes() for p in _runtime_files()]])
    target = out_dir / f"libtinyvim_scan_cuda_on_cpu-{key}.so"
    if target.exists():
        return target

    out_dir.mkdir(parents=True, exist_ok=True)
    runtime = runtime_object()

    def build(tmp: str) -> None:
        with tempfile.TemporaryDirectory(dir=out_dir) as gen:
            tu = rewrite.generate_translation_unit(src_dir, Path(gen))
            _compile([cxx, *CXXFLAGS, "-shared", f"-I{RUNTIME}", f"-I{src_dir}", str(tu), str(runtime), "-o", tmp],
                     "the CUDA kernel on the CPU runtime")

    return _atomic_build(target, build)


#: the TensorRT plugin and its contract driver, as CMake builds them (warnings as errors)
TRT_CXXFLAGS = ("-std=c++17", "-O1", "-fPIC", "-Wall", "-Wextra", "-Werror", "-Wsuggest-override")


def build_trt_on_cpu(tensorrt_include: Path, out_dir: Path | None = None) -> dict[str, Path]:
    """The TensorRT plugin (trt_plugin.cpp + plugin_logic.cpp) compiled against TensorRT's headers in
    `tensorrt_include` with the runtime's cuda_runtime_api.h, linked to the kernel-on-CPU library, and
    tinyvim_trt_contract_check built the same way; cached by content. Returns {"kernel", "plugin",
    "driver"} paths. Nothing of CUDA is needed: the plugin's enqueue runs the kernel's source on
    host memory."""
    tensorrt_include = Path(tensorrt_include)
    if not (tensorrt_include / "NvInfer.h").is_file():
        raise PluginError(f"TensorRT headers not found: no NvInfer.h in {tensorrt_include}")
    out_dir = Path(out_dir) if out_dir else cache_dir()
    kernel = build_library(out_dir)
    cxx = find_compiler()
    headers = sorted(tensorrt_include.glob("*.h"))
    key = _hash([cxx, _compiler_version(cxx), *TRT_CXXFLAGS, kernel.name, CONTRACT_CHECK.read_bytes(),
                 *[(CSRC / f).read_bytes() for f in PLUGIN_SOURCES], *[p.read_bytes() for p in _runtime_files()],
                 *[h.read_bytes() for h in headers]])
    includes = [f"-I{RUNTIME}", f"-I{CSRC}", "-isystem", str(tensorrt_include)]
    plugin = out_dir / f"libtinyvim_trt_plugin_on_cpu-{key}.so"
    driver = out_dir / f"tinyvim_trt_contract_check_on_cpu-{key}"
    if not plugin.exists():
        _atomic_build(plugin, lambda tmp: _compile(
            [cxx, *TRT_CXXFLAGS, "-shared", "-fvisibility=hidden", *includes, str(CSRC / "trt_plugin.cpp"),
             str(CSRC / "plugin_logic.cpp"), str(kernel), f"-Wl,-rpath,{kernel.parent}", "-o", tmp],
            f"the TensorRT plugin on the CPU kernel ({tensorrt_include})"))
    if not driver.exists():
        def build_driver(tmp: str) -> None:
            # -rdynamic: its getPluginRegistry stands in for libnvinfer's (CMake: ENABLE_EXPORTS)
            _compile([cxx, *TRT_CXXFLAGS, *includes, str(CONTRACT_CHECK), "-rdynamic", "-ldl",
                      "-o", tmp], f"tinyvim_trt_contract_check ({tensorrt_include})")
            os.chmod(tmp, 0o755)
        _atomic_build(driver, build_driver)
    return {"kernel": kernel, "plugin": plugin, "driver": driver}
