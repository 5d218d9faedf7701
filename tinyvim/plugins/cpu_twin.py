"""CPU twin of the CUDA cross selective scan, through ctypes.

The twin is the kernel's own arithmetic (csrc/scan_step.h) driven by a plain C++ loop
(csrc/cross_scan_cpu.cpp) in the kernel's summation order. It is built on first use with
a direct g++ call into a cache folder (no CMake needed), keyed by a hash of its sources so
that an edited header is never served stale. Override with TINYVIM_SCAN_CPU_LIB=<path to a
built libtinyvim_scan_cpu.so> (e.g. the CMake build), or TINYVIM_CACHE_DIR for the cache.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path


from tinyvim.plugins.errors import PluginError
from tinyvim.lazy import lazy_import

np = lazy_import("numpy")
torch = lazy_import("torch")
ops = lazy_import("tinyvim.ops")

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = (CSRC / "cross_scan_cpu.cpp", CSRC / "scan_step.h")
_DTYPE_CODES = {"float32": 0, "float64": 3}
_ORDER = ("x", "delta", "Bs", "Cs", "A", "Ds", "delta_bias")


def cache_dir() -> Path:
    """<TINYVIM_CACHE_DIR or ~/.cache/tinyvim>/plugins. A TINYVIM_CACHE_DIR that names a file
    (or lies below one) is a one-line PluginError here, where its name is still known, rather
    than a failed mkdir of some folder under it later."""
    env = os.environ.get("TINYVIM_CACHE_DIR")
    base = Path(env) if env else Path.home() / ".cache" / "tinyvim"
    blocker = next((a for a in (base, *base.parents) if os.path.exists(a) and not os.path.isdir(a)), None)
    if env and blocker is not None:
        raise PluginError(f"TINYVIM_CACHE_DIR={env}: {blocker} is not a folder: point TINYVIM_CACHE_DIR at a "
                          "folder you can write, or unset it")
    return base / "plugins"


def find_compiler() -> str:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise PluginError("no C++ compiler found (tried $CXX, g++, c++, clang++): "
                      "install g++ to build the CPU twin of the scan kernel")


def source_hash(sources, flags: tuple[str, ...] = ()) -> str:
    """16 hex digits over the sources' names and bytes and the compiler flags: an edited
    header or a changed flag never serves a stale library."""
    h = hashlib.sha256(" ".join(flags).encode())
    for src in sources:
        h.update(src.name.encode())
        h.update(src.read_bytes())
    return h.hexdigest()[:16]


def compile_cached(stem: str, sources, flags: list[str], out_dir: Path | None = None, what: str = "the CPU twin",
                   libs: tuple[str, ...] = ()) -> Path:
    """<out_dir>/<stem>-<hash of sources and flags>.so, compiled from the .cpp files among
    `sources` (headers are hashed only) with a direct compiler call, linked with `libs`, unless
    already there; a one-line PluginError naming `what` if it fails."""
    out_dir = Path(out_dir) if out_dir else cache_dir()
    target = out_dir / f"{stem}-{source_hash(sources, (*flags, *libs))}.so"
    if target.exists():
        return target
    cxx = find_compiler()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Compile to a private name, then rename: concurrent test processes never load a
    # half-written library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    cmd = [cxx, "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra", "-Werror",
           *flags, *(str(s) for s in sources if s.suffix == ".cpp"), *libs, "-o", tmp]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            first = (proc.stderr.strip().splitlines() or ["(no output)"])[0]
            raise PluginError(f"building {what} failed ({' '.join(cmd[:1])}): {first}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def build_library(out_dir: Path | None = None) -> Path:
    """Compile the twin (if not already cached) and return the .so path."""
    # -ffp-contract=off: the header writes its fmas explicitly, so the compiler must not
    # fuse anything else (the kernel is built the same way).
    return compile_cached("libtinyvim_scan_cpu", SOURCES, ["-O2", "-ffp-contract=off"], out_dir)


@functools.lru_cache(maxsize=1)
def load_library() -> ctypes.CDLL:
    path = os.environ.get("TINYVIM_SCAN_CPU_LIB") or build_library()
    if not Path(path).is_file():
        raise PluginError(f"CPU twin library not found: {path} (unset TINYVIM_SCAN_CPU_LIB "
                          "to build it on demand)")
    lib = ctypes.CDLL(str(path))
    lib.tinyvim_cross_scan_cpu.restype = ctypes.c_int
    lib.tinyvim_cross_scan_cpu.argtypes = [ctypes.c_void_p] * 8 + [ctypes.c_int] * 6
    lib.tinyvim_cross_scan_cpu_error_string.restype = ctypes.c_char_p
    lib.tinyvim_cross_scan_cpu_error_string.argtypes = [ctypes.c_int]
    return lib


def cross_selective_scan_cpu(x, delta, Bs, Cs, A, Ds, delta_bias) -> np.ndarray:
    """The op contract (tinyvim.ops.scan) on numpy arrays; float32 or float64.

    All inputs are converted to x's dtype (float32 unless x is float64) and made
    contiguous; the result has that dtype."""
    x = np.asarray(x)
    dtype = np.dtype(np.float64 if x.dtype == np.float64 else np.float32)
    arrays = [np.ascontiguousarray(t, dtype=dtype) for t in (x, delta, Bs, Cs, A, Ds, delta_bias)]
    x = arrays[0]
    if x.ndim != 4:
        raise ValueError(f"x must be (B, D, h, w), got {x.shape}")
    b, d, h, w = x.shape
    n = arrays[4].shape[-1] if arrays[4].ndim == 2 else -1
    want = {"delta": (b, 4 * d, h, w), "Bs": (b, 4, n, h, w), "Cs": (b, 4, n, h, w),
            "A": (4 * d, n), "Ds": (4 * d,), "delta_bias": (4 * d,)}
    for name, t in zip(_ORDER[1:], arrays[1:]):
        if t.shape != want[name]:
            raise ValueError(f"{name} must be {want[name]} for x of shape {x.shape}, got {t.shape}")
    y = np.empty_like(x)
    lib = load_library()
    ptrs = [t.ctypes.data for t in arrays] + [y.ctypes.data]
    rc = lib.tinyvim_cross_scan_cpu(*ptrs, b, d, h, w, n, _DTYPE_CODES[dtype.name])
    if rc != 0:
        raise PluginError("CPU twin: " + lib.tinyvim_cross_scan_cpu_error_string(rc).decode())
    return y


def scan_cpu_twin_torch(x, delta, Bs, Cs, A, Ds, delta_bias):
    """Torch-facing wrapper (CPU tensors), same signature as tinyvim.ops.scan_* so it can
    be registered as a scan implementation; float64 stays float64, else float32 compute."""
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    arrays = [t.detach().to("cpu", ct).contiguous().numpy() for t in (x, delta, Bs, Cs, A, Ds, delta_bias)]
    y = cross_selective_scan_cpu(*arrays)
    return torch.from_numpy(y).to(device=x.device, dtype=x.dtype)


def register() -> None:
    """Make the twin selectable as scan implementation "cpu_twin"."""
    ops.register_scan_implementation("cpu_twin", scan_cpu_twin_torch)
