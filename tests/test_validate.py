"""`tinyvim validate` end to end on a small TinyViM-S export (64x64, one export per session):
right model passes (exit 0), a perturbed weight fails (exit 1), bad input exits 2 in one line."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from tinyvim.commands.engines import validate
from tinyvim.tools.inputs import preprocess_image
from tinyvim.backends.model_file import read_onnx_info
from tinyvim.errors import TinyvimError

from conftest import BATCH, SIZE


@pytest.fixture(scope="session")
def perturbed_onnx(tinyvim_onnx, tmp_path_factory):
    """The same export with its largest weight shifted by 5 % of its spread."""
    proto = onnx.load(str(tinyvim_onnx))
    init = max((i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT),
               key=lambda i: np.prod(i.dims))
    w = numpy_helper.to_array(init).copy()
    w += 0.05 * w.std() * np.random.default_rng(0).standard_normal(w.shape).astype(w.dtype)
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    path = tmp_path_factory.mktemp("perturbed") / "perturbed.onnx"
    onnx.save(proto, str(path))
    return path


def run(args):
    return CliRunner().invoke(validate, [str(a) for a in args])


def test_right_model_passes_and_report_follows_schema(tinyvim_onnx, tmp_path):
    report_path = tmp_path / "r.json"
    r = run([tinyvim_onnx, "--num-inputs", 2, "--threads", 2, "--json", report_path])
    assert r.exit_code == 0, r.output
    assert "PASSED" in r.output
    rep = json.loads(report_path.read_text())
    assert rep["schema_version"] == 1 and rep["passed"] is True
    assert rep["reference"]["variant"] == "s" and rep["reference"]["img_size"] == [SIZE, SIZE]
    assert rep["inputs"] == {"source": "random", "num_batches": 2, "batch": BATCH, "seed": 0, "images": None}
    assert rep["backend"] == {"name": "ort", "providers": ["CPUExecutionProvider"], "options": {}}
    (out,) = rep["outputs"]
    assert out["name"] == "logits" and out["shape"] == [2 * BATCH, 1000]
    assert out["max_abs_err"] <= rep["tolerance"]["atol"] + rep["tolerance"]["rtol"] * 10
    assert out["top1"] == 1.0 and out["cosine"] > 0.99999


def test_perturbed_weight_fails_with_exit_1(perturbed_onnx, tmp_path):
    report_path = tmp_path / "r.json"
    r = run([perturbed_onnx, "--num-inputs", 1, "--json", report_path])
    assert r.exit_code == 1, r.output
    assert "FAILED" in r.output and "FAIL:" in r.output
    rep = json.loads(report_path.read_text())
    assert rep["passed"] is False and rep["outputs"][0]["mismatches"] > 0


def test_tight_tolerance_override_fails_a_good_model(tinyvim_onnx):
    r = run([tinyvim_onnx, "--num-inputs", 1, "--atol", 0, "--rtol", 0])
    # float32 reduction order differs between ORT and PyTorch, so exact equality is not expected
    assert r.exit_code == 1, r.output


def test_real_pictures(tinyvim_onnx, tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(3):  # 3 pictures, batch 2 -> 2 batches, the last padded
        Image.fromarray(rng.integers(0, 255, (90 + 10 * i, 120, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    report_path = tmp_path / "r.json"
    r = run([tinyvim_onnx, "--images", tmp_path, "--json", report_path])
    assert r.exit_code == 0, r.output
    rep = json.loads(report_path.read_text())
    assert rep["inputs"]["source"] == "images" and rep["inputs"]["images"] == ["0.png", "1.png", "2.png"]
    assert rep["inputs"]["num_batches"] == 2


def _one_error_line(r) -> str:
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "Traceback" not in r.output
    return lines[0]


def test_bad_inputs_exit_2_with_one_line(tinyvim_onnx, tmp_path):
    r = run([tmp_path / "missing.onnx"])
    assert r.exit_code == 2 and "no such file" in _one_error_line(r)

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01this is not protobuf\xff" * 10)
    r = run([junk])
    assert r.exit_code == 2 and "not an ONNX model" in _one_error_line(r)

    from test_runners import tiny_onnx, tiny_torch
    other = tmp_path / "other.onnx"
    onnx.save(tiny_onnx(tiny_torch(), input_name="input", output_name="output"), other)
    r = run([other])
    assert r.exit_code == 2 and "does not look like a TinyViM model" in _one_error_line(r)

    r = run([tinyvim_onnx, "--img-size", "100"])
    assert r.exit_code == 2 and "not divisible by 32" in _one_error_line(r)
    r = run([tinyvim_onnx, "--img-size", "96"])
    assert r.exit_code == 2 and "does not match the model's input 64x64" in _one_error_line(r)
    r = run([tinyvim_onnx, "--batch", "3"])
    assert r.exit_code == 2 and "fixed batch of 2" in _one_error_line(r)
    r = run([tinyvim_onnx, "--backend", "trt"])
    assert r.exit_code == 2 and "build-engine" in _one_error_line(r)


def test_foreign_model_without_metadata_asks_for_variant(tmp_path):
    from test_runners import tiny_onnx, tiny_torch
    path = tmp_path / "nometa.onnx"
    onnx.save(tiny_onnx(tiny_torch()), path)
    r = run([path])
    assert r.exit_code == 2 and "--variant" in _one_error_line(r)


def test_metadata_read_from_export(tinyvim_onnx):
    info = read_onnx_info(tinyvim_onnx)
    assert info.metadata.variant == "s" and info.fixed_size == (SIZE, SIZE) and info.fixed_batch == BATCH
    assert not info.backbone and not info.plugin_nodes


def test_preprocessing_resizes_crops_and_normalises(tmp_path):
    from PIL import Image
    # left half red, right half blue, 100x200 (H x W): after resize (shorter side 64/0.875=73)
    # and a 64x64 centre crop, the crop straddles the boundary: its left column is red, right blue.
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[:, :100, 0] = 255
    arr[:, 100:, 2] = 255
    Image.fromarray(arr).save(tmp_path / "a.png")
    x = preprocess_image(tmp_path / "a.png", (64, 64))
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    red = (np.array([1, 0, 0]) - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    blue = (np.array([0, 0, 1]) - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x[:, 32, 0], red, atol=1e-5)
    np.testing.assert_allclose(x[:, 32, 63], blue, atol=1e-5)


def test_resolve_reference_rejects_contradictions(tinyvim_onnx):
    from tinyvim.contract import InputSpec, ModelOverrides, ModelSpec
    from tinyvim.tools.reference import resolve_reference
    info = read_onnx_info(tinyvim_onnx)
    cfg, warnings = resolve_reference(info)
    assert (cfg.model, cfg.inputs) == (ModelSpec("s"), InputSpec((64, 64), 2))
    assert resolve_reference(info, ModelOverrides(variant="b"))[0].model.variant == "b"
    with pytest.raises(TinyvimError, match="backbone"):
        resolve_reference(info, ModelOverrides(backbone=True))
    info.metadata = dataclasses.replace(info.metadata, checkpoint="/nowhere/ckpt.pth", checkpoint_sha256="ab" * 32)
    with pytest.raises(TinyvimError, match="pass it with --checkpoint"):
        resolve_reference(info)


def test_plugin_flavour_validates_through_the_cpu_custom_op(plugin_onnx):
    pytest.importorskip("onnxruntime_extensions", reason="onnxruntime-extensions runs the plugin node on CPU")
    path = plugin_onnx                              # S 64x64, batch 1, seed 0 (tests/conftest.py)
    assert read_onnx_info(path).plugin_nodes
    r = run([path, "--num-inputs", 1])
    assert r.exit_code == 0, r.output
    # profiling times the fast compiled scan; it refuses only the PyTorch reference route, whose speed means nothing
    from tinyvim.commands.engines import profile
    args = ["--backend", "ort", "--model", str(path), "--iters", "1", "--warmup", "0"]
    r = CliRunner().invoke(profile, args)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(profile, args, env={"TINYVIM_ORT_SCAN": "reference"})
    assert r.exit_code == 2 and "--backend trt" in r.output
