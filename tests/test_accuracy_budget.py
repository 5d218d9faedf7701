"""Accuracy-budget quantization and entropy calibration: the budget holds on an independent count,
one region fewer would break it, restoring every region gives the fp32 model back; the KL
threshold equals a plain-loop numpy reference on small histograms."""
from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from digits_data import FIXTURE_SIZE, write_pictures
from tinyvim.tools import accuracy_budget as ab
from tinyvim.tools.inputs import preprocess_image
from tinyvim.tools.quantize import CalibrationRequest, entropy_threshold, quantize_onnx

PICTURES = 40


def _entropy_reference(counts, nq, stride):
    """KL(P || Q) from its definition, one bin at a time (no vectorisation, no shared code)."""
    n = len(counts)
    best, best_kl = n, math.inf
    for i in list(range(nq, n, stride)) + [n]:
        p = [float(c) for c in counts[:i]]
        p[-1] += float(sum(counts[i:]))
        q = [0.0] * i
        for j in range(nq):
            members = [b for b in range(i) if b * nq // i == j]
            nonzero = [b for b in members if counts[b] > 0]
            for b in nonzero:
                q[b] = sum(float(counts[m]) for m in members) / len(nonzero)
        ps, qs = sum(p), sum(q)
        if any(a > 0 and b == 0 for a, b in zip(p, q)):
            continue                               # infinite KL: the tail folded into an empty bin
        kl = sum((a / ps) * math.log((a / ps) / (b / qs)) for a, b in zip(p, q) if a > 0)
        if kl < best_kl - 1e-12:
            best, best_kl = i, kl
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entropy_threshold_matches_a_reference_and_clips_outliers(seed):
    rng = np.random.default_rng(seed)
    values = np.abs(rng.normal(size=5000))
    values[:3] = 12.0 + rng.random(3)                 # a few far outliers set max |x|
    counts = np.histogram(values, bins=96, range=(0, values.max()))[0]
    got = entropy_threshold(counts, quantized_bins=16, stride=2)
    assert got == _entropy_reference(counts, 16, 2)
    assert got < 48                                  # the bulk (|x| < 4.5) kept, the outliers clipped
    flat = np.full(96, 50)                           # nothing to gain by clipping a uniform histogram
    assert entropy_threshold(flat, quantized_bins=16, stride=2) == _entropy_reference(flat, 16, 2) == 96


def test_region_names():
    assert ab.region_of("network.4.3.fn.1.weight") == "network.4.3"
    assert ab.region_of("network.6.5.0.fn.x_proj_weight_quantized") == "network.6.5.0"
    assert ab.region_of("network.3.proj.c.weight") == "network.3"
    assert ab.region_of("patch_embed.2.c.weight") == "patch_embed"
    assert ab.region_of("head.weight") == "head"


@pytest.mark.slow      # ~35 ONNX Runtime sessions (one per region, then the binary search): ~25 s on 2 idle cores
def test_budget_holds_and_is_minimal_on_the_fixture(digits_onnx, tmp_path):
    """A deliberately poor int8 (ranges from 2 random images, 90th percentile: most activations
    clipped) loses top-1; the budget restores regions until the drop is within 1 point."""
    data = tmp_path / "held"
    written = write_pictures(data, "heldout", "flat", limit=PICTURES)
    plain = tmp_path / "plain.onnx"
    quantize_onnx(digits_onnx, plain, CalibrationRequest(calib_random=2, method="percentile", percentile=90.0),
                  threads=2)
    result = ab.fit_budget(digits_onnx, plain, data=data, max_drop=1.0, img_size=(FIXTURE_SIZE, FIXTURE_SIZE),
                           batch=PICTURES, threads=2)
    x = np.stack([preprocess_image(data / name, (FIXTURE_SIZE, FIXTURE_SIZE)) for name, _ in written])
    labels = np.array([y for _, y in written])

    def top1(model):
        s = ort.InferenceSession(model if isinstance(model, str) else model.SerializeToString(),
                                 providers=["CPUExecutionProvider"])
        return float(np.mean(s.run(None, {"images": x})[0].argmax(1) == labels))

    fp32, poor = top1(str(digits_onnx)), top1(str(plain))
    assert (result.fp32, result.int8) == (fp32, poor)
    assert (fp32 - poor) * 100 > 1.0, "the poor int8 should need the budget"
    assert result.kept_float and top1(result.model) == result.final and (fp32 - result.final) * 100 <= 1.0
    source, qdq = onnx.load(str(digits_onnx)), onnx.load(str(plain))
    regions = ab.quantized_regions(qdq, source)
    assert {"patch_embed", "head", "network.6.5.0"} <= set(regions)
    fewer = ab.restore_float(qdq, source, {n for r in result.kept_float[:-1] for n in regions[r]})
    assert (fp32 - top1(fewer)) * 100 > 1.0             # one region fewer breaks the budget
    everything = ab.restore_float(qdq, source, {n for ns in regions.values() for n in ns})
    assert not [n for n in everything.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert top1(everything) == fp32
    assert set(result.latency_ms) == {"plain", "budget"}


def test_quantize_budget_options_are_checked_before_any_work(digits_onnx, tmp_path):
    """--max-drop without --data, an empty --data, a budget outside 0..100: one error line, exit 2,
    no output file (the checks come before calibration)."""
    from click.testing import CliRunner

    from tinyvim.cli import cli
    (tmp_path / "empty").mkdir()
    out = tmp_path / "q.onnx"
    cases = {("--max-drop", "1"): "--max-drop and --data go together",
             ("--max-drop", "1", "--data", str(tmp_path / "empty")): "no pictures",
             ("--max-drop", "101", "--data", str(tmp_path / "empty")): "--max-drop 101.0: give top-1 points"}
    for args, message in cases.items():
        r = CliRunner().invoke(cli, ["quantize", str(digits_onnx), "--calib-random", "2", "-o", str(out), *args])
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and message in lines[0], (args, r.stderr)
        assert not out.exists()
