"""Honest output and bounded memory: validate cannot pass with a non-finite reference, says
when it uses random weights, warns when an override or checkpoint contradicts the metadata,
streams its batches; profile exits 2 when nothing would be measured; a static-batch export's
size does not grow with the batch."""
from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import tinyvim
from conftest import SIZE
from tinyvim.cli import cli
from tinyvim.backends.model_file import read_onnx_info
from tinyvim.contract import InputSpec, ModelOverrides
from tinyvim.tools.reference import resolve_checkpoint, resolve_reference
from tinyvim.errors import TinyvimError
from tinyvim.export import export_onnx
from tinyvim.export.onnx_export import uniform_constants_to_fills


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory):
    """The export's own random weights (seed 0) with one NaN in the classifier bias."""
    state = tinyvim.create_model("s", seed=0).state_dict()
    state["head.bias"] = state["head.bias"].clone()
    state["head.bias"][3] = float("nan")
    path = tmp_path_factory.mktemp("nan") / "nan.pth"
    torch.save({"model": state}, path)
    return path


def test_nan_reference_fails_validation_never_passes(tinyvim_onnx, nan_checkpoint, tmp_path):
    report = tmp_path / "r.json"
    r = CliRunner().invoke(cli, ["validate", str(tinyvim_onnx), "--checkpoint", str(nan_checkpoint),
                                 "--allow-nonfinite", "--num-inputs", "1", "--atol", "1e30", "--rtol", "1e30",
                                 "--json", str(report)])
    assert r.exit_code == 1, r.output               # a check that failed, even at an absurd tolerance
    assert "FAILED" in r.output and "non-finite value(s) in the reference (first at [0, 3])" in r.output
    assert "warning: the model was exported with random weights, but --checkpoint was given" in r.output
    import json
    out = json.loads(report.read_text())["outputs"][0]
    assert out["passed"] is False and out["nonfinite_reference"] == 2     # sample 0 and 1, class 3


def test_nan_checkpoint_is_refused_without_the_flag(tinyvim_onnx, nan_checkpoint):
    r = CliRunner().invoke(cli, ["validate", str(tinyvim_onnx), "--checkpoint", str(nan_checkpoint)])
    assert r.exit_code == 2 and "head.bias has 1 non-finite value(s)" in r.output and "--allow-nonfinite" in r.output


def test_random_weights_are_announced_by_every_command(tinyvim_onnx, monkeypatch):
    runs = {
        "info": ["info", "--img-size", "64"],
        "validate": ["validate", str(tinyvim_onnx), "--num-inputs", "1"],
        "profile": ["profile", "--backend", "torch-fused", "--img-size", "64", "--iters", "1", "--warmup", "0"],
    }
    for name, args in runs.items():
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, (name, r.output)
        assert "note: no" in r.output and "randomly initialised weights (seed 0)" in r.output, (name, r.output)
    import tinyvim.export.onnx_export

    def no_export(*args, **kwargs):       # export says it before tracing: no need to trace here
        raise TinyvimError("stopped before tracing")
    monkeypatch.setattr(tinyvim.export.onnx_export, "export_onnx", no_export)
    r = CliRunner().invoke(cli, ["export", "--img-size", "64", "-o", str(tinyvim_onnx.parent / "x.onnx")])
    assert r.exit_code == 2 and "randomly initialised weights (seed 0)" in r.output


def test_overrides_that_contradict_the_metadata_are_warned(tinyvim_onnx, tmp_path):
    info = read_onnx_info(tinyvim_onnx)
    _, warnings = resolve_reference(info, ModelOverrides(variant="b"))
    assert any("--variant b overrides the model's metadata (TinyViM-S)" in w for w in warnings)
    _, warnings = resolve_reference(info, ModelOverrides(weight_seed=5))
    assert any("--init-seed 5 overrides" in w for w in warnings)
    assert resolve_reference(info, ModelOverrides(variant="s", weight_seed=0))[1] == []


def test_checkpoint_sha256_is_verified(tinyvim_onnx, tmp_path):
    info = read_onnx_info(tinyvim_onnx)
    ckpt = tmp_path / "c.pth"
    ckpt.write_bytes(b"the checkpoint the model was exported from")
    import hashlib
    meta = dataclasses.replace(info.metadata, checkpoint=str(ckpt),
                               checkpoint_sha256=hashlib.sha256(ckpt.read_bytes()).hexdigest())
    assert resolve_checkpoint(meta, None, required=True) == (str(ckpt), [])
    ckpt.write_bytes(b"the checkpoint, one byte flipped")            # changed since the export
    path, warnings = resolve_checkpoint(meta, None, required=True)
    assert path == str(ckpt) and "differs from the one the model was exported from" in warnings[0]
    ckpt.unlink()
    with pytest.raises(TinyvimError, match="not found here: pass it with --checkpoint"):
        resolve_checkpoint(meta, None, required=True)
    path, warnings = resolve_checkpoint(meta, None, required=False)   # profile: random weights, said
    assert path is None and "using random weights" in warnings[0]


def test_profile_exits_2_when_nothing_would_be_measured(tinyvim_onnx):
    r = CliRunner().invoke(cli, ["profile", "--backend", "ort", "--model", str(tinyvim_onnx), "--batch", "1,3"])
    assert r.exit_code == 2 and "nothing would be measured" in r.output and "fixed batch of 2" in r.output
    assert "timing" not in r.output


def test_validation_memory_does_not_grow_with_the_number_of_batches(tmp_path):
    """Python-side peak (numpy buffers included) of the validation loop over 2 vs 20 batches of
    2x3x64x64, measured after both runners are loaded (a tiny network stands in for TinyViM:
    the loop is under test, not the model). Batches made by a generator stream through; the
    same batches handed over as a list (what the old loop built) show the growth the
    measurement is able to see. (RSS of the real command: see the reliability note.)"""
    from test_runners import tiny_onnx, tiny_torch
    from tinyvim.tools.compare import tolerance_for
    from tinyvim.tools.inputs import iter_random_batches
    from tinyvim.backends.ort.runner import OrtRunner
    from tinyvim.backends.torch.runner import TorchRunner
    from tinyvim.tools.validate import validate_runner

    net = tiny_torch()
    onnx.save(tiny_onnx(net, size=SIZE), tmp_path / "tiny.onnx")
    target, reference = OrtRunner(tmp_path / "tiny.onnx", threads=1), TorchRunner(net, threads=1)
    peaks = {}
    with target, reference:
        for n, make in ((2, iter_random_batches), (20, iter_random_batches),
                        (20, lambda *a: list(iter_random_batches(*a)))):
            tracemalloc.start()
            result = validate_runner(target, reference, make(n, 2, (SIZE, SIZE), 0), tolerance_for("fp32"))
            peaks[n, make is iter_random_batches] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert result.passed and result.comparison.outputs[0].shape == [2 * n, 10]
    batch_bytes = 2 * 3 * SIZE * SIZE * 4                      # 98 KB per input batch
    # from 2 batches on the loop holds at most two inputs (the next one is made while the
    # previous is still named): streaming stays flat, a list of 20 holds 18 more
    assert peaks[20, True] < peaks[2, True] + batch_bytes // 2, peaks
    assert peaks[20, False] > peaks[2, True] + 16 * batch_bytes, peaks


# --------------------------------------------------------------------- static-batch export size
def test_uniform_fills_replace_only_concat_padding():
    ones = numpy_helper.from_array(np.ones((8, 64), np.float32), "pad")
    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")               # uniform, but a weight
    nan_pad = numpy_helper.from_array(np.full((8, 64), np.nan, np.float32), "nan_pad")  # never equal to itself
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Concat", ["y", "pad", "nan_pad"], ["z"], axis=0)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [24, 64])], [ones, weight, nan_pad])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert uniform_constants_to_fills(model) == 1
    assert sorted(i.name for i in model.graph.initializer) == ["nan_pad", "pad__shape", "w"]
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    z = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(z[8:16], 1.0)       # the fill computes the same constant


def test_static_batch_export_stores_no_batch_sized_constants(tmp_path):
    """At 64x96 the scan grid is 2x3 (6 steps, an odd half-length): the traced parallel scan
    padded it with identity steps, which a static batch folded into (B, 4, 1, N, D) initializers
    (486 MiB at batch 5000). The scan written as ONNX nodes pads nothing batch-sized; the check
    stays for any lowering."""
    batch = 8
    model = tinyvim.create_model("s", seed=0)
    result = export_onnx(tmp_path / "b8.onnx", inputs=InputSpec((SIZE, 96), batch), network=model)
    proto = onnx.load(str(result.path))
    batch_sized = [i.name for i in proto.graph.initializer if i.dims and i.dims[0] == batch and
                   int(np.prod(i.dims)) >= 256]
    assert batch_sized == []
    x = np.random.default_rng(1).standard_normal((batch, 3, SIZE, 96)).astype(np.float32)
    out = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    with torch.no_grad():
        ref = tinyvim.reparameterize(model)(torch.from_numpy(x)).numpy()
    # float32 export vs eager: reduction order only (see compare.DEFAULT_TOLERANCES fp32)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-3)
