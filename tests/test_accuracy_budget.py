"""Accuracy-budget quantization and entropy calibration: the budget holds on an independent count,
one region fewer would break it, restoring every region gives the fp32 model back; the KL
threshold equals a plain-loop numpy reference on small histograms."""
from __future__ import annotations

import math

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from digits_data import FIXTURE_SIZE, write_pictures
from tinyvim.cli import cli
from tinyvim.tools import accuracy_budget as ab
from tinyvim.tools.compare import tolerance_for
from tinyvim.tools.inputs import InputRequest, preprocess_image
from tinyvim.tools.validate import validate_model
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
    held = ab.labelled_held_out(data, img_size=(FIXTURE_SIZE, FIXTURE_SIZE), batch=PICTURES, fixed_batch=False)
    result = ab.fit_budget(digits_onnx, plain, held, max_drop=1.0, threads=2)
    x = np.stack([preprocess_image(data / name, (FIXTURE_SIZE, FIXTURE_SIZE)) for name, _ in written])
    labels = np.array([y for _, y in written])

    def top1(model):
        s = ort.InferenceSession(model if isinstance(model, str) else model.SerializeToString(),
                                 providers=["CPUExecutionProvider"])
        return float(np.mean(s.run(None, {"images": x})[0].argmax(1) == labels))

    fp32, poor = top1(str(digits_onnx)), top1(str(plain))
    assert result.measure == "top1" and (result.fp32, result.int8) == (fp32, poor)
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
    """--data without --max-drop, an empty --data, a budget outside 0..100, an agreement budget on
    random images or on too few pictures to hold any out: one error line, exit 2, no output file
    (the checks come before calibration)."""
    (tmp_path / "empty").mkdir()
    write_pictures(tmp_path / "three", "train", "flat", limit=3)
    out = tmp_path / "q.onnx"
    random = ("--calib-random", "2")
    cases = {(*random, "--data", str(tmp_path / "empty")): "give --max-drop X with it",
             (*random, "--max-drop", "1", "--data", str(tmp_path / "empty")): "no pictures",
             (*random, "--max-drop", "101", "--data", str(tmp_path / "empty")): "--max-drop 101.0: give points",
             (*random, "--max-drop", "1"): "random images say nothing about accuracy",
             ("--calib", str(tmp_path / "three"), "--max-drop", "1"): "3 picture(s); the accuracy budget without"}
    for args, message in cases.items():
        r = CliRunner().invoke(cli, ["quantize", str(digits_onnx), "-o", str(out), *args])
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and message in lines[0], (args, r.stderr)
        assert not out.exists()


#: --calib pictures of the agreement-budget tests: every 4th (16) is held out, 48 calibrate
CALIB_PICTURES = 64
SIZE2 = (FIXTURE_SIZE, FIXTURE_SIZE)


def _session_logits(model, x):
    s = ort.InferenceSession(model if isinstance(model, str) else model.SerializeToString(),
                             providers=["CPUExecutionProvider"])
    return s.run(None, {"images": x})[0]


@pytest.fixture(scope="module")
def poor_agreement(digits_onnx, tmp_path_factory):
    """A deliberately bad int8 (every activation clipped at its 90th percentile) calibrated on the
    --calib pictures less the held-out quarter, and those held-out pictures: (calib folder,
    calibration request, plain Q/DQ path, HeldOut)."""
    folder = tmp_path_factory.mktemp("agreement")
    write_pictures(folder / "calib", "train", "flat", limit=CALIB_PICTURES)
    calibration = CalibrationRequest(calib_dir=folder / "calib", method="percentile", percentile=90.0,
                                     holdout_every=ab.HOLDOUT_EVERY)
    plain = folder / "plain.onnx"
    result = quantize_onnx(digits_onnx, plain, calibration, threads=2)
    assert result.metadata.quantization.samples == CALIB_PICTURES * 3 // 4     # the held-out quarter not seen
    held = ab.unlabelled_held_out(calibration.held_out_files(), img_size=SIZE2, batch=8, fixed_batch=False)
    return folder / "calib", calibration, plain, held


def test_agreement_budget_restores_the_fewest_regions_without_labels(digits_onnx, poor_agreement):
    """No labels: the budget is top-1 agreement with the fp32 model on the held-out --calib pictures.
    A zero-point budget on the poor int8 needs regions back in float; the result agrees on every
    held-out picture, one region fewer does not (counted here with plain ONNX Runtime sessions on
    pictures preprocessed here)."""
    calib, calibration, plain, held = poor_agreement
    files = sorted(calib.glob("*.png"))
    held_files = files[ab.HOLDOUT_EVERY - 1::ab.HOLDOUT_EVERY]
    assert calibration.held_out_files() == held_files and held.pictures == CALIB_PICTURES // 4
    x = np.stack([preprocess_image(f, SIZE2) for f in held_files])
    fp32_logits = _session_logits(str(digits_onnx), x).astype(np.float64)
    plain_logits = _session_logits(str(plain), x).astype(np.float64)
    ref = fp32_logits.argmax(1)

    def agreement(model):
        return float(np.mean(_session_logits(model, x).argmax(1) == ref))

    result = ab.fit_budget(digits_onnx, plain, held, max_drop=0.0, threads=2)
    assert result.measure == "agreement" and held.labels is None and result.fp32 == 1.0
    assert result.int8 == np.mean(plain_logits.argmax(1) == ref) < 0.9, "the poor int8 should need the budget"
    assert result.kept_float and result.final == agreement(result.model) == 1.0 and result.drop_points == 0.0
    source, qdq = onnx.load(str(digits_onnx)), onnx.load(str(plain))
    regions = ab.quantized_regions(qdq, source)
    fewer = ab.restore_float(qdq, source, {n for r in result.kept_float[:-1] for n in regions[r]})
    assert agreement(fewer) < 1.0                                # one region fewer breaks the budget
    # the order: the candidates (where most error enters) by gain, then the rest by entry
    assert [r["region"] for r in result.ranking] == list(dict.fromkeys(r["region"] for r in result.ranking))
    assert {r["region"] for r in result.ranking} == set(regions)
    measured = [r for r in result.ranking if r["gain"] is not None]
    rest = result.ranking[len(measured):]
    assert 4 <= len(measured) < len(regions) / 2 and all(r["gain"] is None for r in rest)
    assert [r["gain"] for r in measured] == sorted((r["gain"] for r in measured), reverse=True)
    assert [r["entry"] for r in rest] == sorted((r["entry"] for r in rest), reverse=True)
    assert min(r["entry"] for r in measured) >= max(r["entry"] for r in rest)
    assert result.kept_float == [r["region"] for r in result.ranking[:len(result.kept_float)]]
    # a measured gain is what restoring that region alone takes off the mean squared logit error
    top = measured[0]
    alone = _session_logits(ab.restore_float(qdq, source, set(regions[top["region"]])), x).astype(np.float64)
    plain_err = np.mean((plain_logits - fp32_logits) ** 2)
    # float64 means of float32 logits: the same numbers up to summation order
    assert top["gain"] == pytest.approx(plain_err - np.mean((alone - fp32_logits) ** 2), rel=1e-6)
    # the per-block figures telescope: their sum is the relative RMS error of the logits themselves
    logits_error = np.sqrt(np.sum((plain_logits - fp32_logits) ** 2) / np.sum(fp32_logits ** 2))
    entries = [r["entry"] for r in result.ranking]
    assert None not in entries
    # float64 sums of float32 tensors over 16 pictures: equal to ~1e-6 relative
    assert sum(entries) == pytest.approx(logits_error, rel=1e-5)


def test_restore_candidates_hold_most_of_the_entering_error():
    entries = {"a": 0.5, "b": 0.3, "c": 0.1, "d": 0.05, "e": 0.05, "f": -0.1, "g": 0.0}
    assert ab.restore_candidates(list(entries), entries) == ["a", "b", "c", "d"]      # 0.95 >= 0.9, and 4 at least
    many = {f"r{i}": 1.0 for i in range(10)}
    assert ab.restore_candidates(list(many), many) == [f"r{i}" for i in range(9)]    # 9 of 10 equal shares = 90 %
    assert ab.restore_candidates(["x", "y"], {}) == ["x", "y"]                       # no figures: every region


def test_entry_figure_puts_the_error_where_it_enters(digits_onnx, poor_agreement):
    """The per-block figure beside the ranking: a copy of the fp32 model with one block's weights
    scaled by 1.5 (no quantization at all) has its error enter at that block - nothing before it,
    most there."""
    _, _, _, held = poor_agreement
    source = onnx.load(str(digits_onnx))
    taps = ab.region_taps(source)
    assert list(taps)[0] == "patch_embed" and taps["head"] == source.graph.output[0].name
    assert len({t for r, t in taps.items() if r.count(".") >= 2}) == sum(r.count(".") >= 2 for r in taps)
    victim = "network.2.1"
    broken = onnx.ModelProto()
    broken.CopyFrom(source)
    for init in broken.graph.initializer:
        if ab.region_of(init.name) == victim and init.name.endswith("weight"):
            w = onnx.numpy_helper.to_array(init) * np.float32(1.5)
            init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    scorer = ab._Scorer(held, threads=2)
    entries = ab.entry_errors(scorer, source, broken)
    order = list(taps)
    before = order[:order.index(victim)]
    assert max(abs(entries[r]) for r in before) < 1e-5       # fp32 vs itself: round-off only
    assert max(entries, key=entries.get) == victim and entries[victim] > 0.01


def test_quantize_agreement_budget_cli_and_calibration_progress(digits_onnx, poor_agreement, tmp_path):
    """`quantize --max-drop 70` without --data on the poor calibration: the screen says the measure
    (agreement on held-out --calib pictures), a loose budget (70 points) keeps no region in float (the file
    is the plain Q/DQ graph); calibration shows per-batch progress with images/s on stderr, for
    both percentile passes, and none of it reaches stdout or the --json report."""
    calib, _, plain, _ = poor_agreement
    out, report = tmp_path / "q.onnx", tmp_path / "q.json"
    r = CliRunner().invoke(cli, ["quantize", str(digits_onnx), "--calib", str(calib), "--calib-method", "percentile",
                                 "--percentile", "90", "--max-drop", "70", "--threads", "2", "-o", str(out),
                                 "--json", str(report)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    progress = [line for line in r.stderr.splitlines() if line.startswith("  calibration [")]
    assert any("pass 1/2" in line for line in progress) and any("pass 2/2" in line for line in progress)
    assert all("images/s" in line for line in progress)
    assert f"{CALIB_PICTURES * 3 // 4}/{CALIB_PICTURES * 3 // 4}" in progress[-1]    # 48 pictures, 6 batches of 8
    assert "images/s" not in r.stdout and "images/s" not in report.read_text()
    assert "top-1 agreement with the fp32 model on 16 held-out --calib pictures" in r.stdout
    assert "no region needed" in r.stdout
    budget = json.loads(report.read_text())["budget"]
    assert budget["measure"] == "agreement" and budget["kept_float"] == [] and budget["pictures"] == 16
    assert 70 >= budget["plain_drop_points"] > 0
    plain_graph, written = onnx.load(str(plain)).graph, onnx.load(str(out)).graph
    assert [n.op_type for n in written.node] == [n.op_type for n in plain_graph.node]


def test_fp8_floor_holds_on_the_trained_fixture(digits_onnx, tmp_path):
    """The fp8 cosine floor, set on trained weights (tinyvim/tools/compare.py, docs/quantize.md): the
    fixture's fp8 file (minmax ranges from training pictures) passes `validate` against PyTorch on
    held-out pictures, with the floor below its worst cosine; the same file with weight scales that
    map half of each channel's amax to 448 (clipping, a wrong scale) fails it."""
    calib, held = tmp_path / "calib", tmp_path / "held"
    write_pictures(calib, "train", "flat", limit=CALIB_PICTURES)
    written = write_pictures(held, "heldout", "flat", limit=16)     # one batch: the PyTorch reference is slow
    fp8 = tmp_path / "fp8.onnx"
    quantize_onnx(digits_onnx, fp8, CalibrationRequest(calib_dir=calib), dtype="fp8", threads=2)
    floor = tolerance_for("fp8").min_cosine
    assert floor == 0.95
    report = validate_model(fp8, inputs=InputRequest(images=held, batch=16), threads=2, log=lambda m: None)
    (logits,) = report["outputs"]
    assert report["passed"] and report["tolerance"]["precision"] == "fp8"
    assert floor < logits["cosine"] < 0.9995          # it is fp8 (not the fp32 numbers), above the floor
    model = onnx.load(str(fp8))
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:                 # a wrong scale: half of amax at 448, the rest clipped
        if node.op_type == "DequantizeLinear" and node.input[0].endswith("_quantized"):
            w = onnx.numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
            clipped = np.clip(w * 2, -448, 448).astype(w.dtype if w.dtype != np.float32 else np.float32)
            inits[node.input[0]].CopyFrom(onnx.numpy_helper.from_array(
                clipped.astype(onnx.helper.tensor_dtype_to_np_dtype(inits[node.input[0]].data_type)), node.input[0]))
    x = np.stack([preprocess_image(held / name, SIZE2) for name, _ in written])
    ref = _session_logits(str(digits_onnx), x).astype(np.float64)   # fp32 export: PyTorch within 1e-4
    got = _session_logits(model, x).astype(np.float64)
    cosines = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cosines.min() < floor
