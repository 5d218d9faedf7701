"""The full CMake build (CUDA kernel, CPU twin, host-logic tests; the TensorRT plugin is
skipped without its headers) and the C ABI the libraries export. The kernel is built for one
architecture (each one adds ~4 s of nvcc and the host code is the same); that nvcc knows every
architecture of the default fat binary is checked separately.
Skipped, with the reason, only where cmake or nvcc is absent."""
import ctypes
import re
import shutil
import subprocess

import numpy as np
import pytest

from tinyvim.ops.reference import cross_selective_scan_reference, random_scan_inputs
from tinyvim.plugins import cpu_twin
from tinyvim.plugins.build import SOURCE_DIR, build, find_nvcc

pytestmark = [
    pytest.mark.skipif(not shutil.which("cmake"), reason="cmake not found"),
    pytest.mark.skipif(find_nvcc() is None, reason="nvcc not found"),
]

CUDA_SYMBOLS = ["tinyvim_cross_scan_cuda", "tinyvim_cross_scan_cuda_workspace_size",
                "tinyvim_cross_scan_cuda_supports", "tinyvim_cross_scan_cuda_error_string",
                "tinyvim_cross_scan_cuda_abi_version"]
CPU_SYMBOLS = ["tinyvim_cross_scan_cpu", "tinyvim_cross_scan_cpu_error_string",
               "tinyvim_cross_scan_cpu_abi_version"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build(tmp_path_factory.mktemp("plugins") / "build", jobs=2, cuda_arch="75-real")


def test_nvcc_knows_every_architecture_of_the_default_fat_binary():
    """CMake syntax: NN-real is SASS for sm_NN only, a bare NN is SASS plus PTX (compute_NN)."""
    text = (SOURCE_DIR / "CMakeLists.txt").read_text()
    default = re.search(r'set\(TINYVIM_CUDA_ARCH "([^"]+)"', text).group(1).split(";")
    assert len(default) >= 5 and "90-real" in default          # H100/H200 among them
    nvcc = find_nvcc()
    sass = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True, check=True).stdout.split()
    ptx = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=True).stdout.split()
    for arch in default:
        number = arch.removesuffix("-real")
        assert f"sm_{number}" in sass, (arch, sass)
        if not arch.endswith("-real"):
            assert f"compute_{number}" in ptx, (arch, ptx)


def _exported(path):
    out = subprocess.run(["nm", "-D", "--defined-only", str(path)], capture_output=True, text=True).stdout
    return {line.split()[-1] for line in out.splitlines() if " T " in line}


def test_build_produces_libraries_and_reports_skips(built):
    for target in ("tinyvim_scan_cuda", "tinyvim_scan_cpu", "tinyvim_plugin_logic_test"):
        assert built.built[target].is_file(), target
    assert built.built["tinyvim_scan_cuda"].name == "libtinyvim_scan_cuda.so"
    assert built.built["tinyvim_scan_cpu"].name == "libtinyvim_scan_cpu.so"
    if "tinyvim_trt_plugin" not in built.built:          # no TensorRT headers here
        assert "NvInfer.h" in built.skipped["tinyvim_trt_plugin"]


@pytest.mark.skipif(not shutil.which("nm"), reason="nm (binutils) not found")
def test_libraries_export_only_the_c_abi(built):
    cuda_syms = _exported(built.built["tinyvim_scan_cuda"])
    assert set(CUDA_SYMBOLS) <= cuda_syms
    assert not any("cross_scan_kernel" in s for s in cuda_syms)   # hidden visibility
    assert set(CPU_SYMBOLS) <= _exported(built.built["tinyvim_scan_cpu"])


def test_cuda_library_loads_and_validates_without_a_gpu(built):
    lib = ctypes.CDLL(str(built.built["tinyvim_scan_cuda"]))
    assert lib.tinyvim_cross_scan_cuda_abi_version() == 1
    lib.tinyvim_cross_scan_cuda_supports.argtypes = [ctypes.c_int, ctypes.c_int]
    assert [lib.tinyvim_cross_scan_cuda_supports(n, 0) for n in (0, 1, 8, 9, 16, 17)] == [0, 1, 1, 1, 1, 0]
    assert [lib.tinyvim_cross_scan_cuda_supports(8, t) for t in (0, 1, 2, 3)] == [1, 1, 1, 0]
    ws = lib.tinyvim_cross_scan_cuda_workspace_size
    ws.restype = ctypes.c_size_t
    ws.argtypes = [ctypes.c_int] * 6
    assert ws(256, 384, 7, 7, 8, 0) == 0          # model shapes: accumulator in shared memory
    assert ws(256, 384, 8, 8, 16, 1) == 0
    assert ws(2, 12, 20, 21, 8, 0) == 2 * 12 * 420 * 4   # long sequence: global fp32 accumulator
    fn = lib.tinyvim_cross_scan_cuda
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 8 + [ctypes.c_int] * 6 + [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    # Argument checks come before any CUDA call: exact cudaError codes, no crash.
    assert fn(*([None] * 8), 1, 4, 7, 7, 17, 0, None, 0, None) == 801    # cudaErrorNotSupported (N)
    assert fn(*([None] * 8), 1, 4, 7, 7, 8, 5, None, 0, None) == 801     # (dtype)
    assert fn(*([None] * 8), 1, 0, 7, 7, 8, 0, None, 0, None) == 1       # cudaErrorInvalidValue (D=0)
    assert fn(*([None] * 8), 1, 4, 7, 7, 8, 0, None, 0, None) == 1       # null pointers
    assert fn(*([None] * 8), 0, 4, 7, 7, 8, 0, None, 0, None) == 0       # empty batch: nothing to do
    lib.tinyvim_cross_scan_cuda_error_string.restype = ctypes.c_char_p
    assert lib.tinyvim_cross_scan_cuda_error_string(801)


def test_cmake_twin_equals_on_demand_twin_bit_for_bit(built, monkeypatch):
    """The CMake-built twin (-O3) and the g++ on-demand one (-O2) run the same operations
    (explicit fmas, no contraction, no fast-math): identical bits, and both near the reference."""
    inp = {k: v.astype(np.float32) for k, v in random_scan_inputs(3, 13, 7, 5, 16, seed=5).items()}
    y_direct = cpu_twin.cross_selective_scan_cpu(**inp)
    cpu_twin.load_library.cache_clear()
    monkeypatch.setenv("TINYVIM_SCAN_CPU_LIB", str(built.built["tinyvim_scan_cpu"]))
    try:
        y_cmake = cpu_twin.cross_selective_scan_cpu(**inp)
    finally:
        cpu_twin.load_library.cache_clear()
    assert np.array_equal(y_cmake, y_direct)
    ref = cross_selective_scan_reference(**inp)
    assert np.abs(y_cmake - ref).max() <= 1e-5 * np.abs(ref).max()
