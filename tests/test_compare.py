"""Comparison metrics against numbers computed by hand."""
from __future__ import annotations

import numpy as np
import pytest

from tinyvim.tools.compare import (DEFAULT_TOLERANCES, Tolerance, compare_output, compare_outputs,
                                     tolerance_for, topk_agreement)


def test_metrics_match_hand_computed_values():
    ref = np.array([[1.0, -2.0, 0.0, 4.0]], np.float32)
    out = np.array([[1.1, -2.0, 0.0005, 3.0]], np.float32)
    r = compare_output("feat0", ref, out, Tolerance(atol=1e-3, rtol=1e-3))
    assert r.max_abs_err == pytest.approx(1.0, rel=1e-6)
    assert r.mean_abs_err == pytest.approx((0.1 + 0 + 0.0005 + 1.0) / 4, rel=1e-5)
    # floor = 1e-3 * max|ref| = 4e-3: the 0.0 entry is measured against 4e-3 -> 0.125;
    # the others: 0.1/1 = 0.1, 1/4 = 0.25.
    assert r.max_rel_err == pytest.approx(0.25, rel=1e-5)
    # dot = 1.1 + 4 + 0 + 12; |ref|^2 = 21; |out|^2 = 1.21 + 4 + 2.5e-7 + 9
    assert r.cosine == pytest.approx(17.1 / np.sqrt(21 * 14.21000025), rel=1e-6)
    # tolerance 1e-3 + 1e-3*|r|: 0.1 > 2e-3 fails, 5e-4 <= 1e-3 passes, 1.0 > 5e-3 fails
    assert r.mismatches == 2 and not r.passed
    assert r.top1 is None  # not logits


def test_relative_error_uses_floor_for_zero_reference():
    ref = np.zeros((1, 3), np.float32)
    out = np.array([[0, 1e-7, 0]], np.float32)
    r = compare_output("feat0", ref, out, Tolerance(1e-6, 0))
    assert np.isfinite(r.max_rel_err) and r.passed


def test_topk_agreement_by_hand():
    ref = np.array([[0, 5, 1, 2, 3, 4, -1], [9, 0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5, 6]], float)
    # sample 0: same argmax; sample 1: argmax moves to 6 but 0 is still in top-5?
    # cand[1] top-5 = {6, 5, 4, 3, 2}: ref top-1 (0) not in it; sample 2: argmax 5 vs ref 6, 6 in top5
    cand = np.array([[0, 5, 1, 2, 3, 4, -1], [-9, 0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 6, 5.5]], float)
    top1, top5 = topk_agreement(ref, cand)
    assert top1 == pytest.approx(1 / 3)
    assert top5 == pytest.approx(2 / 3)


def test_logits_get_topk_and_pass_within_tolerance():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 1000)).astype(np.float32)
    out = ref + np.float32(1e-6) * rng.standard_normal(ref.shape).astype(np.float32)
    r = compare_output("logits", ref, out, DEFAULT_TOLERANCES["fp32"])
    assert r.passed and r.top1 == 1.0 and r.top5 == 1.0 and r.mismatches == 0


def test_shape_nan_and_missing_outputs_fail_with_reason():
    tol = Tolerance(1, 1)
    assert "shape" in compare_output("a", np.zeros((1, 2)), np.zeros((2, 1)), tol).reason
    bad = compare_output("a", np.zeros((1, 2)), np.array([[0, np.nan]]), tol)
    assert not bad.passed and "non-finite" in bad.reason
    c = compare_outputs({"logits": np.zeros((1, 2))}, {}, tol)
    assert not c.passed and "missing" in c.outputs[0].reason


def test_min_cosine_gates_fp16():
    ref = np.ones((1, 100), np.float32)
    out = ref.copy()
    out[0, :50] = 1.04  # inside atol 5e-2 elementwise ...
    out[0, 50:] = 0.96
    ok = compare_output("feat0", ref, out, tolerance_for("fp16"))
    assert ok.passed  # cosine of this is 0.9992 >= 0.999
    out[0, 50:] = -0.0  # a systematic error
    assert not compare_output("feat0", ref, out, tolerance_for("fp16")).passed


def test_tolerance_overrides():
    t = tolerance_for("fp32", atol=1e-2)
    assert t.atol == 1e-2 and t.rtol == DEFAULT_TOLERANCES["fp32"].rtol
    with pytest.raises(ValueError):
        tolerance_for("int4")
