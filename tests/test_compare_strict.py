"""A comparison that cannot pass by accident: non-finite values on either side, bad tolerances,
metrics on finite data only, and the streaming accumulator against whole-array formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyvim.tools.compare import (REL_FLOOR_FRACTION, ComparisonAccumulator, Tolerance, compare_output,
                                     compare_outputs, tolerance_for)

LOOSE = Tolerance(atol=1e3, rtol=1e3)       # would pass anything finite


@pytest.mark.parametrize("side", ["reference", "candidate"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_on_either_side_fails_with_count_and_place(side, bad):
    r = np.zeros((3, 5))
    c = np.zeros((3, 5))
    (r if side == "reference" else c)[1, 2] = bad
    (r if side == "reference" else c)[2, 4] = bad
    out = compare_output("logits", r, c, LOOSE)
    assert not out.passed
    assert f"2 non-finite value(s) in the {side} (first at [1, 2])" in out.reason
    # metrics from the finite part only: the 13 finite pairs are equal
    assert out.max_abs_err == 0 and out.mean_abs_err == 0 and out.cosine == 1.0 and out.top1 == 1.0
    assert getattr(out, f"nonfinite_{side}") == 2


def test_all_nan_reference_fails_and_reports_no_metrics():
    out = compare_output("logits", np.full((2, 4), np.nan), np.full((2, 4), np.nan), LOOSE)
    assert not out.passed and "8 non-finite value(s) in the reference" in out.reason
    d = out.to_dict()
    assert d["max_abs_err"] is None and d["cosine"] is None and d["top1"] is None   # strict JSON: null, not NaN


def test_nan_in_a_later_batch_is_located_in_the_whole_output():
    acc = ComparisonAccumulator(LOOSE)
    for i in range(3):
        c = np.zeros((2, 4))
        if i == 2:
            c[1, 3] = np.nan
        acc.update({"feat0": np.zeros((2, 4))}, {"feat0": c})
    (out,) = acc.result().outputs
    assert "first at [5, 3]" in out.reason and out.shape == [6, 4]


@pytest.mark.parametrize("atol,rtol", [(math.nan, 0), (0, math.nan), (math.inf, 0), (0, math.inf), (-1e-9, 0),
                                       (0, -1), (True, 0), ("1", 0)])
def test_tolerances_must_be_finite_and_non_negative(atol, rtol):
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        Tolerance(atol, rtol)


def test_tolerance_for_refuses_nan_overrides():
    with pytest.raises(ValueError):
        tolerance_for("fp32", atol=float("nan"))
    with pytest.raises(ValueError):
        Tolerance(0, 0, min_cosine=float("nan"))


def test_cosine_of_huge_finite_values_is_defined():
    r = np.full((1, 8), 1e300)
    out = compare_output("feat0", r, r.copy(), tolerance_for("fp16"))   # fp16 gates on cosine
    assert out.cosine == pytest.approx(1.0) and out.passed


def test_shape_and_missing_outputs_fail():
    c = compare_outputs({"logits": np.zeros((2, 3)), "x": np.zeros((2, 1))}, {"logits": np.zeros((3, 2))}, LOOSE)
    assert [o.passed for o in c.outputs] == [False, False] and not c.passed
    assert "shape" in c.outputs[0].reason and "missing" in c.outputs[1].reason and c.outputs[1].shape == [2, 1]


# --------------------------------------------------------------------- streaming == whole
def _direct(r: np.ndarray, c: np.ndarray, tol: Tolerance) -> dict:
    """The documented metric formulas on the whole (finite) arrays, written out independently."""
    r, c = r.astype(np.float64), c.astype(np.float64)
    diff = np.abs(c - r)
    floor = max(REL_FLOOR_FRACTION * np.abs(r).max(), np.finfo(np.float64).tiny)
    rr, cc = r.reshape(len(r), -1), c.reshape(len(c), -1)
    cos = [float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) if np.any(a) and np.any(b) else float(np.all(a == b))
           for a, b in zip(rr, cc)]
    return {"max_abs_err": diff.max(), "mean_abs_err": diff.mean(),
            "max_rel_err": (diff / np.maximum(np.abs(r), floor)).max(), "cosine": min(cos),
            "mismatches": int((diff > tol.atol + tol.rtol * np.abs(r)).sum()),
            "top1": float(np.mean(rr.argmax(1) == cc.argmax(1)))}


@settings(max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), sizes=st.lists(st.integers(1, 4), min_size=1, max_size=6),
       width=st.integers(2, 12), scale=st.sampled_from([1e-6, 1.0, 1e4]), noise=st.sampled_from([0.0, 1e-7, 1e-2, 1.0]))
def test_streaming_equals_the_whole_array_formulas(seed, sizes, width, scale, noise):
    rng = np.random.default_rng(seed)
    r = rng.standard_normal((sum(sizes), width)) * scale
    r[rng.random(r.shape) < 0.2] = 0.0                     # exact zeros exercise the relative floor
    c = r + noise * scale * rng.standard_normal(r.shape)
    tol = Tolerance(atol=1e-4 * scale, rtol=1e-3)
    acc = ComparisonAccumulator(tol)
    start = 0
    for n in sizes:
        acc.update({"logits": r[start:start + n]}, {"logits": c[start:start + n]})
        start += n
    (out,) = acc.result().outputs
    want = _direct(r, c, tol)
    for key in ("max_abs_err", "max_rel_err", "cosine"):
        # the same float64 operations in another order: agreement to a few ulps
        assert getattr(out, key) == pytest.approx(want[key], rel=1e-12, abs=1e-300), key
    # mean: a running sum vs numpy's pairwise sum over <= 72 values
    assert out.mean_abs_err == pytest.approx(want["mean_abs_err"], rel=1e-12, abs=1e-300)
    assert out.mismatches == want["mismatches"] and out.top1 == pytest.approx(want["top1"])
    assert out.passed == (want["mismatches"] == 0) and out.shape == [sum(sizes), width]
    whole = compare_output("logits", r, c, tol)             # one batch: the same numbers
    assert whole.max_rel_err == pytest.approx(out.max_rel_err, rel=1e-12, abs=1e-300)


@settings(max_examples=40)
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=2, max_size=24),
       tol=st.floats(0, 1e30))
def test_nothing_non_finite_ever_passes(values, tol):
    r = np.asarray(values, np.float32).reshape(1, -1)
    c = np.roll(r, 1)
    for a, b in ((r, c), (c, r), (r, r)):
        out = compare_output("logits", a, b, Tolerance(tol, tol))
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            assert not out.passed and "non-finite" in out.reason
