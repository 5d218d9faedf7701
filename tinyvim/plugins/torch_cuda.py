"""The CUDA kernel as tinyvim scan implementation "cuda" (through ctypes).

Importing this module registers "cuda" with tinyvim.ops unconditionally and loads
nothing: the library is looked up (tinyvim.plugins.build.find_cuda_library) on first call,
so on a machine without a GPU or without the built library, importing is harmless and
calling the scan raises one clear PluginError saying what is missing.
"""
from __future__ import annotations

import ctypes
import functools

import torch
from torch import Tensor

from tinyvim.ops import check_scan_inputs, register_scan_implementation
from tinyvim.plugins.build import find_cuda_library
from tinyvim.plugins.errors import PluginError

ABI_VERSION = 1
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


@functools.lru_cache(maxsize=4)
def load_cuda_library(path: str | None = None) -> ctypes.CDLL:
    path = path or str(find_cuda_library())
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise PluginError(f"cannot load the CUDA scan library {path}: {e}") from None
    lib.tinyvim_cross_scan_cuda_abi_version.restype = ctypes.c_int
    version = lib.tinyvim_cross_scan_cuda_abi_version()
    if version != ABI_VERSION:
        raise PluginError(f"{path} has ABI version {version}, this tinyvim needs {ABI_VERSION}: "
                          "rebuild it with `tinyvim build-plugin`")
    lib.tinyvim_cross_scan_cuda.restype = ctypes.c_int
    lib.tinyvim_cross_scan_cuda.argtypes = ([ctypes.c_void_p] * 8 + [ctypes.c_int] * 6
                                            + [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p])
    lib.tinyvim_cross_scan_cuda_workspace_size.restype = ctypes.c_size_t
    lib.tinyvim_cross_scan_cuda_workspace_size.argtypes = [ctypes.c_int] * 6
    lib.tinyvim_cross_scan_cuda_supports.restype = ctypes.c_int
    lib.tinyvim_cross_scan_cuda_supports.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.tinyvim_cross_scan_cuda_error_string.restype = ctypes.c_char_p
    lib.tinyvim_cross_scan_cuda_error_string.argtypes = [ctypes.c_int]
    return lib


def cuda_scan_available() -> tuple[bool, str]:
    """(usable, reason): whether scan_cuda can run here, and if not, why."""
    if not torch.cuda.is_available():
        return False, "torch.cuda.is_available() is False (no GPU or a CPU-only PyTorch)"
    try:
        load_cuda_library()
    except PluginError as e:
        return False, str(e)
    return True, "ok"


def scan_cuda(x: Tensor, delta: Tensor, Bs: Tensor, Cs: Tensor, A: Tensor, Ds: Tensor,
              delta_bias: Tensor, *, library: str | None = None) -> Tensor:
    """The op contract on CUDA tensors. x's dtype (float32/float16/bfloat16) is the I/O
    type: delta, Bs and Cs are cast to it; A, Ds and delta_bias to float32. The scan
    computes in float32 whatever the I/O type; y has x's dtype."""
    if not x.is_cuda:
        ok, why = cuda_scan_available()
        raise PluginError("the \"cuda\" scan needs CUDA tensors" + ("" if ok else f": {why}"))
    if x.dtype not in DTYPE_CODES:
        raise PluginError(f"the \"cuda\" scan takes float32, float16 or bfloat16, got {x.dtype} "
                          "(use the \"sequential\" or \"parallel\" scan for float64)")
    check_scan_inputs(x, delta, Bs, Cs, A, Ds, delta_bias)
    lib = load_cuda_library(library)
    dev = x.device
    io = [t.to(device=dev, dtype=x.dtype).contiguous() for t in (x, delta, Bs, Cs)]
    params = [t.to(device=dev, dtype=torch.float32).contiguous() for t in (A, Ds, delta_bias)]
    b, d, h, w = x.shape
    n = A.shape[-1]
    code = DTYPE_CODES[x.dtype]
    if not lib.tinyvim_cross_scan_cuda_supports(n, code):
        raise PluginError(f"the \"cuda\" scan supports d_state 1..16, got {n}")
    y = torch.empty_like(io[0])
    ws_bytes = lib.tinyvim_cross_scan_cuda_workspace_size(b, d, h, w, n, code)
    ws = torch.empty(ws_bytes // 4 + 1, dtype=torch.float32, device=dev) if ws_bytes else None
    with torch.cuda.device(dev):
        stream = torch.cuda.current_stream(dev).cuda_stream
        rc = lib.tinyvim_cross_scan_cuda(
            *(t.data_ptr() for t in io + params), y.data_ptr(), b, d, h, w, n, code,
            ws.data_ptr() if ws is not None else None, ws_bytes, stream)
    if rc != 0:
        raise PluginError(f"CUDA scan kernel failed: {lib.tinyvim_cross_scan_cuda_error_string(rc).decode()} "
                          f"(code {rc}, x {tuple(x.shape)}, N {n}, {x.dtype})")
    return y


@functools.lru_cache(maxsize=1)
def _usable() -> bool:
    return cuda_scan_available()[0]


register_scan_implementation("cuda", scan_cuda, available=_usable)
