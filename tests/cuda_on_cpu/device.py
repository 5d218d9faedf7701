"""A built kernel library, loaded with its C ABI typed; guard-paged "device" buffers; one call of
tinyvim_cross_scan_cuda on them."""
from __future__ import annotations

import ctypes
import os

import numpy as np

from .storage import DTYPES, STORAGE_NUMPY, to_storage

STATS = ("launches", "max_block", "max_grid_x", "max_grid_y", "max_smem", "last_stream", "overruns", "refused",
         "blocks", "divergent")


def load_library(path: str | os.PathLike) -> ctypes.CDLL:
    """The kernel library at `path` (build.build_library) with its C ABI and the runtime's entry points typed."""
    lib = ctypes.CDLL(str(path))
    lib.tinyvim_cross_scan_cuda.restype = ctypes.c_int
    lib.tinyvim_cross_scan_cuda.argtypes = ([ctypes.c_void_p] * 8 + [ctypes.c_int] * 6 +
                                            [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p])
    lib.tinyvim_cross_scan_cuda_workspace_size.restype = ctypes.c_size_t
    lib.tinyvim_cross_scan_cuda_workspace_size.argtypes = [ctypes.c_int] * 6
    lib.tinyvim_cross_scan_cuda_error_string.restype = ctypes.c_char_p
    lib.tinyvim_cross_scan_cuda_error_string.argtypes = [ctypes.c_int]
    lib.tinyvim_cuda_on_cpu_stats.restype = ctypes.c_int
    lib.tinyvim_cuda_on_cpu_stats.argtypes = [ctypes.POINTER(ctypes.c_longlong), ctypes.c_int]
    lib.tinyvim_cuda_on_cpu_reset_stats.restype = None
    lib.tinyvim_cuda_on_cpu_malloc.restype = ctypes.c_void_p
    lib.tinyvim_cuda_on_cpu_malloc.argtypes = [ctypes.c_size_t, ctypes.c_char_p]
    lib.tinyvim_cuda_on_cpu_free.restype = None
    lib.tinyvim_cuda_on_cpu_free.argtypes = [ctypes.c_void_p]
    return lib


def stats(lib: ctypes.CDLL) -> dict[str, int]:
    """What the runtime's launches saw since the last reset (see cuda_types_on_cpu.h)."""
    out = (ctypes.c_longlong * len(STATS))()
    lib.tinyvim_cuda_on_cpu_stats(out, len(STATS))
    return dict(zip(STATS, out))


class DeviceMemory:
    """Guard-paged buffers of the runtime (tinyvim_cuda_on_cpu_malloc), as numpy arrays; all freed
    on exit. An access past the end of one (or before its start) kills the process with a line on
    stderr naming the buffer."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        self.ptrs: list[int] = []

    def __enter__(self) -> DeviceMemory:
        return self

    def __exit__(self, *exc) -> None:
        for p in self.ptrs:
            self.lib.tinyvim_cuda_on_cpu_free(p)
        self.ptrs.clear()

    def empty(self, name: str, shape, dtype) -> np.ndarray:
        """A new buffer, every byte 0xFF (NaN in each float type)."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        ptr = self.lib.tinyvim_cuda_on_cpu_malloc(nbytes, name.encode())
        if not ptr:
            raise MemoryError(f"tinyvim_cuda_on_cpu_malloc({nbytes}) for {name} failed")
        self.ptrs.append(ptr)
        raw = (ctypes.c_uint8 * max(nbytes, 1)).from_address(ptr)
        return np.frombuffer(raw, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)

    def put(self, name: str, a: np.ndarray) -> np.ndarray:
        out = self.empty(name, a.shape, a.dtype)
        out[...] = a
        return out


def cross_selective_scan_on_cpu(lib: ctypes.CDLL, x, delta, Bs, Cs, A, Ds, delta_bias, dtype: str = "float32",
                                workspace_bytes: int | None = None, stream: int = 0) -> tuple[int, np.ndarray]:
    """One call of tinyvim_cross_scan_cuda, every tensor in its own guard-paged buffer of exactly
    its size. x, delta, Bs, Cs are converted to `dtype`'s storage (storage.to_storage), A/Ds/delta_bias
    to float32; y starts NaN. The workspace is allocated with tinyvim_cross_scan_cuda_workspace_size's
    bytes unless `workspace_bytes` says otherwise (NaN-filled: the ABI promises no initialisation is
    needed; 0: none). Returns (status, a copy of y in dtype's storage)."""
    io = [to_storage(t, dtype) for t in (x, delta, Bs, Cs)]
    params = [np.ascontiguousarray(t, dtype=np.float32) for t in (A, Ds, delta_bias)]
    b, d, h, w = io[0].shape
    n = params[0].shape[1]
    if workspace_bytes is None:
        workspace_bytes = lib.tinyvim_cross_scan_cuda_workspace_size(b, d, h, w, n, DTYPES[dtype])
    with DeviceMemory(lib) as mem:
        bufs = [mem.put(name, t) for name, t in zip(("x", "delta", "Bs", "Cs", "A", "Ds", "delta_bias"), io + params)]
        y = mem.empty("y", io[0].shape, STORAGE_NUMPY[dtype])
        ws = mem.empty("workspace", (workspace_bytes,), np.uint8) if workspace_bytes else None
        rc = lib.tinyvim_cross_scan_cuda(*[t.ctypes.data for t in bufs], y.ctypes.data, b, d, h, w, n, DTYPES[dtype],
                                         ws.ctypes.data if ws is not None else None, workspace_bytes, stream or None)
        return rc, y.copy()
