"""The CPU twin of the CUDA scan (same arithmetic header as the kernel) against the
independent float64 reference and against the torch implementations.

Tolerance: the twin computes in float32 (eps 6e-8). Each output sums 4 directions of
N-term dot products of states that are themselves short geometric-like sums (decays in
(0, 1]), so the rounding error grows to a few tens of ulps of the largest magnitude:
measured ~1e-7 of max|y|. 1e-5 of max|y| leaves ~100x margin, while any indexing or
ordering error (wrong direction, wrong channel block, transposed h/w) gives O(1) errors.
The error is normalised by max|y| rather than per element because single outputs can
sit near zero where a relative error means nothing."""
import numpy as np
import pytest
import torch

from tinyvim.ops import scan_implementation, scan_parallel, scan_sequential
from tinyvim.ops.reference import cross_selective_scan_reference, random_scan_inputs
from tinyvim.plugins.cpu_twin import (
    build_library, cross_selective_scan_cpu, register, scan_cpu_twin_torch)
from tinyvim.plugins.errors import PluginError

REL_F32 = 1e-5
REL_F64 = 1e-12

SHAPES = [  # (batch, D, h, w, N): h != w, D not a multiple of 8, batch 1 and 3, N 8/16
    (1, 5, 3, 4, 8),
    (3, 13, 7, 5, 16),
    (1, 12, 7, 7, 8),
    (3, 7, 5, 8, 8),
    (1, 3, 4, 9, 16),
    (1, 2, 1, 6, 8),      # a single row: column-major order == row-major order
    (1, 2, 6, 1, 8),      # a single column
    (1, 1, 1, 1, 8),      # L = 1
    (2, 3, 4, 3, 5),      # N = 5 runs in the 8-state instantiation, zero-padded
    (1, 3, 3, 3, 11),     # N = 11 in the 16-state one
]


def _rel_err(y, ref):
    return float(np.abs(np.asarray(y, np.float64) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}d{}h{}w{}n{}".format(*s))
def test_twin_matches_float64_reference(shape):
    b, d, h, w, n = shape
    inp = random_scan_inputs(b, d, h, w, n, seed=sum(shape))
    ref = cross_selective_scan_reference(**inp)
    y32 = cross_selective_scan_cpu(**{k: v.astype(np.float32) for k, v in inp.items()})
    assert y32.dtype == np.float32 and y32.shape == (b, d, h, w)
    assert _rel_err(y32, ref) <= REL_F32
    # The float64 instantiation of the same code is exact to float64 round-off:
    # this pins the index arithmetic independently of float32 noise.
    y64 = cross_selective_scan_cpu(**inp)
    assert y64.dtype == np.float64
    assert _rel_err(y64, ref) <= REL_F64


def test_twin_detects_a_wrong_direction():
    """Guard against a vacuous tolerance: swapping two directions' channels must fail it."""
    inp = random_scan_inputs(1, 4, 3, 5, 8, seed=3)
    ref = cross_selective_scan_reference(**inp)
    bad = dict(inp)
    d = 4
    perm = np.r_[np.arange(d, 2 * d), np.arange(0, d), np.arange(2 * d, 4 * d)]
    bad["delta"] = inp["delta"][:, perm]
    assert _rel_err(cross_selective_scan_cpu(**bad), ref) > 100 * REL_F32


@pytest.mark.parametrize("shape", [(3, 13, 7, 5, 16), (1, 12, 7, 7, 8), (2, 6, 8, 8, 8)])
def test_twin_matches_torch_implementations(shape):
    b, d, h, w, n = shape
    inp = {k: torch.from_numpy(v.astype(np.float32))
           for k, v in random_scan_inputs(b, d, h, w, n, seed=7).items()}
    y_twin = scan_cpu_twin_torch(**inp).double().numpy()
    for impl in (scan_sequential, scan_parallel):
        y = impl(*inp.values()).double().numpy()
        assert _rel_err(y_twin, y) <= REL_F32, impl.__name__


def test_twin_registered_as_scan_implementation():
    register()
    inp = {k: torch.from_numpy(v) for k, v in random_scan_inputs(2, 5, 4, 3, 8, seed=9).items()}
    from tinyvim.ops import cross_selective_scan
    with scan_implementation("cpu_twin"):
        y = cross_selective_scan(*inp.values())
    assert y.dtype == torch.float64
    ref = cross_selective_scan_reference(**{k: v.numpy() for k, v in inp.items()})
    assert _rel_err(y.numpy(), ref) <= REL_F64


@pytest.mark.parametrize("n", [17, 32])
def test_twin_rejects_unsupported_state(n):
    inp = random_scan_inputs(1, 2, 2, 2, n)
    with pytest.raises(PluginError, match="d_state"):
        cross_selective_scan_cpu(**inp)


def test_twin_rejects_bad_shapes():
    inp = random_scan_inputs(1, 2, 3, 3, 8)
    inp["Bs"] = inp["Bs"][:, :, :, :2]
    with pytest.raises(ValueError, match="Bs must be"):
        cross_selective_scan_cpu(**inp)


def test_build_into_fresh_dir_is_atomic_and_cached(tmp_path):
    first = build_library(tmp_path)
    assert first.is_file() and first.parent == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == [first.name]   # no leftover temp file
    mtime = first.stat().st_mtime_ns
    assert build_library(tmp_path) == first and first.stat().st_mtime_ns == mtime
