"""The fast CPU scan against the independent float64 reference and against the twin, on the
twin's own cases (SHAPES: h != w, odd D, batch 1 and 3, N 5/8/11/16, one row, one column, L = 1).

Tolerances (relative to max|y|, as in the twin's tests; single outputs near 0 make a
per-element relative error meaningless):
- float32 I/O: 1e-5. The kernel runs in float32 with its own exp/log1p polynomials (~2 ulp)
  and FMA contraction on AVX2, in a different summation order from the twin: measured
  1-3e-7, so 1e-5 leaves ~30x margin while a wrong direction/channel/layout gives O(1).
- float16 / bfloat16 I/O: the reference runs on the same rounded inputs in float64, so what
  remains is the float32 computation plus one rounding of y to the output type: half an ulp
  of max|y| is 2^-12 (fp16) / 2^-9 (bf16); bounds 2^-11 and 2^-8 (one ulp).
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from test_plugins_cpu_twin import SHAPES
from tinyvim.ops import cross_selective_scan, scan_implementation
from tinyvim.ops.reference import cross_selective_scan_reference, random_scan_inputs
from tinyvim.plugins.cpu_fast import (
    build_library, cross_selective_scan_fast, isa, register, scan_cpu_fast_torch)
from tinyvim.plugins.cpu_twin import cross_selective_scan_cpu
from tinyvim.plugins.errors import PluginError

REL_F32 = 1e-5
REL_F16 = 2.0 ** -11
REL_BF16 = 2.0 ** -8
IO_NAMES = ("x", "delta", "Bs", "Cs")


def _rel_err(y, ref):
    return float(np.abs(np.asarray(y, np.float64) - ref).max() / np.abs(ref).max())


def _f32(inp):
    return {k: v.astype(np.float32) for k, v in inp.items()}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}d{}h{}w{}n{}".format(*s))
def test_fast_matches_float64_reference_and_twin(shape):
    inp = random_scan_inputs(*shape, seed=sum(shape))
    ref = cross_selective_scan_reference(**inp)
    y = cross_selective_scan_fast(**_f32(inp))
    assert y.dtype == np.float32 and y.shape == inp["x"].shape
    assert _rel_err(y, ref) <= REL_F32
    twin = cross_selective_scan_cpu(**_f32(inp)).astype(np.float64)
    assert _rel_err(y, twin) <= REL_F32


@pytest.mark.parametrize("name", IO_NAMES)
def test_a_nan_input_reaches_y_where_the_reference_has_it(name):
    """A NaN anywhere in x/delta/Bs/Cs must reach the outputs it feeds (validate counts non-finite
    outputs): exactly the float64 reference's NaN positions. The clamps inside the kernel's exp
    and softplus are max() written so that a NaN passes through (a max that dropped it turned a
    NaN delta into a finite dt: mutant tried, this test fails on it)."""
    inp = _f32(random_scan_inputs(2, 5, 3, 4, 8, seed=1))
    inp[name].reshape(-1)[7] = np.nan
    with np.errstate(invalid="ignore"):
        ref = cross_selective_scan_reference(**inp)
    y = cross_selective_scan_fast(**inp)
    assert np.isnan(ref).any() and np.array_equal(np.isnan(y), np.isnan(ref))


def test_fast_result_does_not_depend_on_threads():
    """Every (batch, direction) writes its own buffer, summed in a fixed order: bit-identical.
    Big enough (1.6M state updates) that the kernel really starts several threads (it keeps
    small scans on one), and checked against the twin at that size too."""
    inp = _f32(random_scan_inputs(3, 32, 16, 16, 16, seed=5))
    one = cross_selective_scan_fast(**inp, threads=1)
    for threads in (2, 3, 0):
        assert np.array_equal(cross_selective_scan_fast(**inp, threads=threads), one)
    assert _rel_err(one, cross_selective_scan_cpu(**inp).astype(np.float64)) <= REL_F32


@pytest.mark.parametrize("shape", [(3, 13, 7, 5, 16), (1, 3, 3, 3, 11), (1, 2, 6, 1, 8)],
                         ids=lambda s: "b{}d{}h{}w{}n{}".format(*s))
def test_fast_reduced_precision_io(shape):
    inp = random_scan_inputs(*shape, seed=11)
    # float16 through numpy: the reference sees the same rounded inputs
    f16 = {k: v.astype(np.float16 if k in IO_NAMES else np.float32) for k, v in inp.items()}
    y16 = cross_selective_scan_fast(**f16)
    assert y16.dtype == np.float16
    assert _rel_err(y16, cross_selective_scan_reference(**f16)) <= REL_F16
    # bfloat16 through torch (numpy has no bfloat16)
    tb = {k: torch.from_numpy(v.astype(np.float32)) for k, v in inp.items()}
    tb.update({k: tb[k].bfloat16() for k in IO_NAMES})
    yb = scan_cpu_fast_torch(**tb)
    assert yb.dtype == torch.bfloat16
    ref_b = cross_selective_scan_reference(**{k: v.float().numpy() for k, v in tb.items()})
    assert _rel_err(yb.float().numpy(), ref_b) <= REL_BF16


def test_fast_detects_a_wrong_direction():
    """Guard against a vacuous tolerance: swapping two directions' channels must fail it."""
    inp = random_scan_inputs(1, 4, 3, 5, 8, seed=3)
    ref = cross_selective_scan_reference(**inp)
    d = 4
    perm = np.r_[np.arange(d, 2 * d), np.arange(0, d), np.arange(2 * d, 4 * d)]
    bad = dict(inp, delta=inp["delta"][:, perm])
    assert _rel_err(cross_selective_scan_fast(**_f32(bad)), ref) > 100 * REL_F32


def test_fast_registered_as_scan_implementation():
    register()
    inp = {k: torch.from_numpy(v) for k, v in _f32(random_scan_inputs(2, 5, 4, 3, 8, seed=9)).items()}
    with scan_implementation("cpu_fast"):
        y = cross_selective_scan(*inp.values())
    ref = cross_selective_scan_reference(**{k: v.numpy() for k, v in inp.items()})
    assert y.dtype == torch.float32 and _rel_err(y.numpy(), ref) <= REL_F32


def test_fast_rejects_bad_input():
    with pytest.raises(PluginError, match="d_state"):
        cross_selective_scan_fast(**_f32(random_scan_inputs(1, 2, 2, 2, 17)))
    inp = _f32(random_scan_inputs(1, 2, 3, 3, 8))
    inp["Cs"] = inp["Cs"][:, :, :, :2]
    with pytest.raises(ValueError, match="Cs must be"):
        cross_selective_scan_fast(**inp)


def test_fast_build_cached_and_dispatch_named():
    first = build_library()          # the cache the other tests filled: found, not rebuilt
    mtime = first.stat().st_mtime_ns
    assert build_library() == first and first.stat().st_mtime_ns == mtime
    assert first.name.startswith("libtinyvim_scan_cpu_fast-")
    # the clone the loader picked matches what the CPU can do (x86-64-v3 needs these, among others)
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    has_v3 = {"avx2", "fma", "bmi2", "movbe", "f16c"} <= flags
    assert isa() == ("x86-64-v3" if has_v3 else "generic")
