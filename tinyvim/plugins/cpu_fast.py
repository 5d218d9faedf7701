"""The fast CPU cross selective scan (csrc/cross_scan_cpu_fast.cpp), through ctypes.

Where the twin (tinyvim.plugins.cpu_twin) is the CUDA kernel's arithmetic for checking, this
is the one for speed: channels vectorised, one thread per (batch, direction), fp32 state,
float32 / float16 / bfloat16 I/O. ONNX Runtime's custom op and the benches call it; the
OpenVINO extension links the same source. Built on first use into the cache like the twin
(keyed by a hash of its sources and flags); TINYVIM_SCAN_CPU_FAST_LIB=<path> overrides it
(e.g. the CMake build of `tinyvim build-plugin`).
"""
from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

from tinyvim.lazy import lazy_import
from tinyvim.plugins.cpu_twin import CSRC, compile_cached
from tinyvim.plugins.errors import PluginError

np = lazy_import("numpy")
torch = lazy_import("torch")
ops = lazy_import("tinyvim.ops")

SOURCES = (CSRC / "cross_scan_cpu_fast.cpp", CSRC / "cross_scan_cpu_fast.h", CSRC / "scan_step.h")
#: -O3 for the vectoriser; -fno-trapping-math lets it turn the exp clamps into min/max
#: (nothing here reads FP exception flags); -ffp-contract=fast lets the AVX2 clone use FMA.
#: The ISA is not chosen here: the source clones its hot loops for x86-64 and x86-64-v3.
FLAGS = ["-O3", "-ffp-contract=fast", "-fno-trapping-math", "-pthread"]
ENV_LIB = "TINYVIM_SCAN_CPU_FAST_LIB"
#: I/O element type -> the kernel's dtype code (tinyvim::scan::DType), by name: numpy and torch load on use
_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}


def build_library(out_dir: Path | None = None) -> Path:
    """Compile the fast kernel (if not already cached) and return the .so path."""
    return compile_cached("libtinyvim_scan_cpu_fast", SOURCES, FLAGS, out_dir, what="the fast CPU scan")


@functools.lru_cache(maxsize=1)
def load_library() -> ctypes.CDLL:
    path = os.environ.get(ENV_LIB) or build_library()
    if not Path(path).is_file():
        raise PluginError(f"{ENV_LIB}={path}: no such file (unset it to build the fast CPU scan on demand)")
    lib = ctypes.CDLL(str(path))
    lib.tinyvim_cross_scan_fast.restype = ctypes.c_int
    lib.tinyvim_cross_scan_fast.argtypes = [ctypes.c_void_p] * 8 + [ctypes.c_int] * 7
    lib.tinyvim_cross_scan_fast_error_string.restype = ctypes.c_char_p
    lib.tinyvim_cross_scan_fast_error_string.argtypes = [ctypes.c_int]
    lib.tinyvim_cross_scan_fast_isa.restype = ctypes.c_char_p
    return lib


def isa() -> str:
    """The code path the CPU dispatch picked: 'x86-64-v3' (AVX2 + FMA) or 'generic'."""
    return load_library().tinyvim_cross_scan_fast_isa().decode()


def threading(lib: ctypes.CDLL | None = None) -> str:
    """How a build of the kernel runs its tasks: 'threads' (threads of its own: this library) or
    'tbb' (the caller's TBB arena: the OpenVINO extension, which holds the same symbols)."""
    lib = lib or load_library()
    if not hasattr(lib, "tinyvim_cross_scan_fast_threading"):
        raise PluginError(f"{lib._name} predates tinyvim_cross_scan_fast_threading: rebuild it "
                          "(tinyvim build-plugin --cpu-only)")
    lib.tinyvim_cross_scan_fast_threading.restype = ctypes.c_char_p
    return lib.tinyvim_cross_scan_fast_threading().decode()


def default_threads() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # not on Linux
        return os.cpu_count() or 1


def _check_shapes(shapes: list[tuple[int, ...]]) -> tuple[int, int, int, int, int]:
    x = shapes[0]
    if len(x) != 4:
        raise ValueError(f"x must be (B, D, h, w), got {x}")
    b, d, h, w = x
    n = shapes[4][-1] if len(shapes[4]) == 2 else -1
    want = {"delta": (b, 4 * d, h, w), "Bs": (b, 4, n, h, w), "Cs": (b, 4, n, h, w),
            "A": (4 * d, n), "Ds": (4 * d,), "delta_bias": (4 * d,)}
    for (name, shape), got in zip(want.items(), shapes[1:]):
        if tuple(got) != shape:
            raise ValueError(f"{name} must be {shape} for x of shape {x}, got {tuple(got)}")
    return b, d, h, w, n


def _call(ptrs: list[int], dims: tuple[int, int, int, int, int], code: int, threads: int) -> None:
    lib = load_library()
    rc = lib.tinyvim_cross_scan_fast(*ptrs, *dims, code, threads)
    if rc != 0:
        raise PluginError("fast CPU scan: " + lib.tinyvim_cross_scan_fast_error_string(rc).decode())


def cross_selective_scan_fast(x, delta, Bs, Cs, A, Ds, delta_bias, *, threads: int = 0) -> np.ndarray:
    """The op contract (tinyvim.ops.scan) on numpy arrays. x, delta, Bs, Cs: float32 or
    float16 (delta/Bs/Cs converted to x's dtype); A, Ds, delta_bias: float32. Already
    contiguous arrays of the right type are passed as they are (no copy). threads=0: one per
    hardware thread. Returns y in x's dtype."""
    x = np.asarray(x)
    dtype = np.dtype(np.float16 if x.dtype == np.float16 else np.float32)
    io = [np.ascontiguousarray(t, dtype=dtype) for t in (x, delta, Bs, Cs)]
    params = [np.ascontiguousarray(t, dtype=np.float32) for t in (A, Ds, delta_bias)]
    dims = _check_shapes([t.shape for t in io + params])
    y = np.empty_like(io[0])
    _call([t.ctypes.data for t in io + params] + [y.ctypes.data], dims, _CODES[dtype.name], threads)
    return y


def scan_cpu_fast_torch(x, delta, Bs, Cs, A, Ds, delta_bias, *, threads: int = 0):
    """Torch-facing wrapper (same signature as tinyvim.ops.scan_*): float32/float16/bfloat16
    stay as they are (computed with an fp32 state), float64 and others run as float32."""
    dtype = x.dtype if x.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float32
    io = [t.detach().to("cpu", dtype).contiguous() for t in (x, delta, Bs, Cs)]
    params = [t.detach().to("cpu", torch.float32).contiguous() for t in (A, Ds, delta_bias)]
    dims = _check_shapes([tuple(t.shape) for t in io + params])
    y = torch.empty_like(io[0])
    _call([t.data_ptr() for t in io + params] + [y.data_ptr()], dims, _CODES[str(dtype).removeprefix("torch.")],
          threads)
    return y.to(device=x.device, dtype=x.dtype)


def register() -> None:
    """Make the fast kernel selectable as scan implementation "cpu_fast"."""
    ops.register_scan_implementation("cpu_fast", scan_cpu_fast_torch)
