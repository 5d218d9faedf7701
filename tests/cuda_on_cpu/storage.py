"""float32 <-> the storage the kernel reads and writes for each dtype (float32, float16, bfloat16 bit
patterns as uint16), in numpy: an implementation independent of the runtime's conversions."""
from __future__ import annotations

import numpy as np

#: the C ABI's dtype codes (tinyvim_scan.h)
DTYPES = {"float32": 0, "float16": 1, "bfloat16": 2}
#: numpy type of each dtype's storage (bfloat16: bit patterns)
STORAGE_NUMPY = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


def to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even (NaN -> 0x7FFF)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where((u & 0x7FFFFFFF) > 0x7F800000, np.uint16(0x7FFF), r)


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def to_storage(a: np.ndarray, dtype: str) -> np.ndarray:
    """A float array as the kernel reads it for `dtype`: float32, float16, or bf16 bits (uint16)."""
    if dtype == "bfloat16":
        return to_bf16_bits(a)
    return np.ascontiguousarray(a, dtype=np.float16 if dtype == "float16" else np.float32)


def from_storage(a: np.ndarray, dtype: str) -> np.ndarray:
    return bf16_bits_to_float32(a) if dtype == "bfloat16" else np.asarray(a, dtype=np.float32)


def rounded(a: np.ndarray, dtype: str) -> np.ndarray:
    """`a` rounded to `dtype` and back to float32: what the kernel sees of a float32 input."""
    return from_storage(to_storage(a, dtype), dtype)
