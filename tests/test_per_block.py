"""`validate --per-block`: the ONNX taps are the same tensors as the PyTorch hooks (checked by
value, so a wrong match cannot pass), and a perturbation of one block's weights in an fp16
export is pointed at that block first."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from tinyvim.commands.engines import validate
from tinyvim.tools.per_block import expected_residuals, trunk_residuals
from tinyvim.contract import InputSpec, ModelSpec
from tinyvim.export import export_onnx
from tinyvim.model import create_model

SIZE = 64
# an SS2D in the middle of stage 3 (the LocalBlocks' branches are scaled by layer_scale = 1e-5
# in a randomly initialised model: a fault there would hardly show)
BLOCK = "network.4.4.op"


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tinyvim_onnx):
    folder = tmp_path_factory.mktemp("per_block")
    fp16 = export_onnx(folder / "s16.onnx", ModelSpec("s"), InputSpec((SIZE, SIZE), 2), precision="fp16").path
    return tinyvim_onnx, fp16


def _report(path, tmp_path, *extra):
    out = tmp_path / "r.json"
    r = CliRunner().invoke(validate, [str(path), "--per-block", "--num-inputs", "1", "--threads", "2", "--json",
                                      str(out), *map(str, extra)])
    return r, (json.loads(out.read_text()) if out.exists() else None)


def test_taps_are_the_pytorch_modules_outputs(exports, tmp_path):
    r, rep = _report(exports[0], tmp_path)
    assert r.exit_code == 0, r.output
    rows = rep["per_block"]["rows"]
    names = [row["module"] for row in rows]
    # stem, every block of S (3+3+9+6), each SS2D branch (5), the 3 downsamplers, the logits
    assert names[:5] == ["patch_embed", "network.0.0", "network.0.1", "network.0.2.op", "network.0.2"]
    assert len(names) == 1 + 21 + 5 + 3 + 1 and names[-1] == "logits"
    assert names.count("network.3") == 1 and "network.4.8.op" in names
    # fp32 ORT vs PyTorch at every tap: ~1e-6 of each tensor's scale. A tap matched to the
    # wrong tensor would be off by O(1) (or not even have the reference's shape).
    assert all(row["scaled_err"] < 1e-4 and row["cosine"] > 0.99999 for row in rows), rows
    assert rep["per_block"]["first_jump"] is None
    assert "per-block comparison" in r.output and "network.4.4.op" in r.output


def _perturbed(fp16_path, tmp_path):
    """The fp16 export with the last conv of BLOCK's branch (the SS2D's out_proj) shifted by 20 %
    of its spread: a localized fault whose error enters the network at that block."""
    proto = onnx.load(str(fp16_path))
    model = create_model("s")
    residuals = trunk_residuals(proto.graph, len(expected_residuals(model)))
    index = [name for name, _, _ in expected_residuals(model)].index(BLOCK)
    producer = next(n for n in proto.graph.node if residuals[index].branch in n.output)
    # in the fp16 graph the branch may end in a Cast or the conv itself: walk up to the Conv
    while producer.op_type != "Conv":
        producer = next(n for n in proto.graph.node if producer.input[0] in n.output)
    init = next(i for i in proto.graph.initializer if i.name == producer.input[1])
    w = numpy_helper.to_array(init).astype(np.float32)
    w += 0.2 * w.std() * np.random.default_rng(0).standard_normal(w.shape).astype(np.float32)
    init.CopyFrom(numpy_helper.from_array(w.astype(numpy_helper.to_array(init).dtype), init.name))
    path = tmp_path / "perturbed16.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("backend", ["ort", "ov"])
def test_perturbed_block_is_named_first_in_an_fp16_export(exports, tmp_path, backend):
    if backend == "ov":
        pytest.importorskip("openvino", reason="the ov backend needs the openvino extra")
    if backend == "ort":
        r, clean = _report(exports[1], tmp_path, "--backend", backend)
        assert r.exit_code == 0, r.output
        # fp16 noise: every tap ~1e-3 of its scale, no jump, and the errors stay within the fp16
        # floor all along the network (they add up to the final error's size, not more)
        assert clean["per_block"]["first_jump"] is None
        assert max(row["scaled_err"] for row in clean["per_block"]["rows"]) < 1e-2

    r, bad = _report(_perturbed(exports[1], tmp_path), tmp_path, "--backend", backend)
    rows = bad["per_block"]["rows"]
    assert bad["per_block"]["first_jump"] == BLOCK, r.output
    names = [row["module"] for row in rows]
    before = rows[:names.index(BLOCK)]
    assert max(row["scaled_err"] for row in before) < 1e-2            # untouched blocks: fp16 noise only
    assert rows[names.index(BLOCK)]["scaled_err"] > 3e-2
    assert "<- error jumps here" in r.output


def test_a_graph_without_the_block_structure_is_a_one_line_error(tmp_path):
    from test_runners import tiny_onnx, tiny_torch
    from tinyvim.errors import TinyvimError
    with pytest.raises(TinyvimError, match="cannot follow TinyViM's blocks"):
        trunk_residuals(tiny_onnx(tiny_torch()).graph, 3)


def test_an_engine_is_rebuilt_from_the_marked_onnx(tinyvim_onnx, tmp_path, monkeypatch):
    """TensorRT goes through the same path: the engine is rebuilt from the marked copy of its
    source ONNX with the original engine's precision and batch (build_engine is a stand-in
    here: no TensorRT on this machine)."""
    import dataclasses
    from types import SimpleNamespace

    from tinyvim.backends.model_file import read_onnx_info
    from tinyvim.tools import per_block
    calls = []

    def fake_build(onnx_path, output, **kwargs):
        calls.append((onnx.load(str(onnx_path)), kwargs))
        return SimpleNamespace(engine_path=output)
    monkeypatch.setattr(per_block, "build_engine", fake_build)
    info = dataclasses.replace(read_onnx_info(tinyvim_onnx), kind="engine", path=str(tmp_path / "m.engine"),
                               precision="fp16", batch_range=(2, 2))
    proto = onnx.load(str(tinyvim_onnx))
    taps = per_block.taps_for(create_model("s"), proto.graph, ["logits"])
    marked = per_block._marked_model(info, per_block.mark_outputs(proto, taps), tmp_path,
                                     SimpleNamespace(model_kinds=("engine",)), {"plugin": None}, log=lambda m: None)
    (built, kwargs), = calls
    assert marked.path == str(tmp_path / "marked.engine") and marked.kind == "engine"
    assert kwargs["precision"] == "fp16" and kwargs["min_batch"] == kwargs["max_batch"] == 2
    outputs = [o.name for o in built.graph.output]
    assert outputs[0] == "logits" and len(outputs) == len(taps)          # logits + one per tap
