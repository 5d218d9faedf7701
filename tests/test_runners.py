"""Runners on a tiny conv net written both as ONNX (onnx.helper) and PyTorch with the same
weights: the ORT and torch runners must agree, and their options must take effect."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from tinyvim.backends.base import BaseRunner
from tinyvim.backends.model_file import has_plugin_nodes
from tinyvim.backends.ort.loader import parse_providers
from tinyvim.backends.ort.runner import OrtRunner
from tinyvim.backends.torch.runner import TorchRunner
from tinyvim.errors import TinyvimError


def tiny_torch(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()


def tiny_onnx(model: nn.Module, *, input_name="images", output_name="logits", batch=None, size=32,
              metadata: dict | None = None, plugin_node: bool = False) -> onnx.ModelProto:
    """The same network as `tiny_torch` as an ONNX graph, weights copied from `model`."""
    conv, lin = model[0], model[3]
    inits = [numpy_helper.from_array(t.detach().numpy(), n) for n, t in
             (("w", conv.weight), ("b", conv.bias), ("fw", lin.weight), ("fb", lin.bias))]
    nodes = [helper.make_node("Conv", [input_name, "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], [output_name], transB=1)]
    if plugin_node:
        nodes.insert(1, helper.make_node("CrossSelectiveScan", ["c"], ["c2"], domain="tinyvim"))
        nodes[2].input[0] = "c2"
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch or "N", 3, size, size])],
                              [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch or "N", 10])], inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("tinyvim", 1)] if plugin_node else [])
    proto = helper.make_model(graph, opset_imports=opsets)
    proto.ir_version = 8
    for k, v in (metadata or {}).items():
        proto.metadata_props.add(key=k, value=v)
    return proto


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = tiny_torch()
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(tiny_onnx(model), path)
    return model, path


def test_ort_and_torch_runners_agree(tiny):
    model, path = tiny
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with OrtRunner(path, threads=1) as ort_runner, TorchRunner(model, threads=1) as torch_runner:
        assert ort_runner.input_names == ["images"] and ort_runner.output_names == ["logits"]
        a = ort_runner.infer({"images": x})["logits"]
        b = torch_runner.infer({"images": x})["logits"]
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert a.shape == (2, 10)
    np.testing.assert_allclose(a, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(b, expected)


def test_ort_session_disables_spinning_and_sets_threads(tiny):
    runner = OrtRunner(tiny[1], threads=3, optimization_level="basic")
    so = runner.session_options()
    assert so.intra_op_num_threads == 3
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    import onnxruntime as ort
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC


def test_torch_runner_sets_and_restores_threads(tiny):
    before = torch.get_num_threads()
    with TorchRunner(tiny[0], threads=1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_timing_hook_and_last_timings(tiny):
    seen = []
    runner = OrtRunner(tiny[1])
    runner.add_timing_hook(lambda r, t: seen.append((r.name, dict(t))))
    with runner:
        runner.infer({"images": np.zeros((1, 3, 32, 32), np.float32)})
    assert len(seen) == 1 and seen[0][0] == "ort"
    timings = seen[0][1]
    # compute (the session.run call) is part of, hence at most, the total
    assert 0 < timings["compute"] <= timings["total"]
    assert runner.last_inference_time() == timings["compute"]


def test_runner_rejects_wrong_feed_and_inactive_use(tiny):
    runner = OrtRunner(tiny[1])
    with pytest.raises(TinyvimError, match="not active"):
        runner.infer({"images": np.zeros((1, 3, 32, 32), np.float32)})
    with runner, pytest.raises(TinyvimError, match="expects inputs"):
        runner.infer({"x": np.zeros((1, 3, 32, 32), np.float32)})
    assert not runner.is_active


def test_ort_runner_refuses_plugin_graph_clearly(tmp_path, monkeypatch):
    """Only the PyTorch reference route is refused where a speed is measured."""
    path = tmp_path / "plugin.onnx"
    proto = tiny_onnx(tiny_torch(), plugin_node=True)
    assert has_plugin_nodes(proto.graph)
    onnx.save(proto, path)
    monkeypatch.setenv("TINYVIM_ORT_SCAN", "reference")
    with pytest.raises(TinyvimError, match="--backend trt"):
        OrtRunner(path, allow_plugin_cpu=False).activate()
    monkeypatch.setenv("TINYVIM_ORT_SCAN", "fastest")
    with pytest.raises(TinyvimError, match="TINYVIM_ORT_SCAN='fastest'.*choose fast or reference"):
        OrtRunner(path, allow_plugin_cpu=False).activate()


def test_unknown_provider_names_the_available_ones(tiny):
    with pytest.raises(TinyvimError, match="CPUExecutionProvider"):
        OrtRunner(tiny[1], providers="NoSuchExecutionProvider").activate()


def test_parse_providers_short_names():
    assert parse_providers("cuda, cpu") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert parse_providers(None) == ["CPUExecutionProvider"]
    assert parse_providers(["TensorrtExecutionProvider"]) == ["TensorrtExecutionProvider"]


def test_trt_runner_without_tensorrt_says_how_to_get_it(tmp_path):
    pytest.importorskip("torch")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed: the missing-TensorRT message cannot be checked")
    except ImportError:
        pass
    from tinyvim.backends.trt.runner import TrtRunner
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0")
    with pytest.raises(TinyvimError, match="TensorRT is not installed") as info:
        TrtRunner(engine).activate()
    assert "\n" not in str(info.value)


def test_base_runner_is_abstract():
    with pytest.raises(TypeError):
        BaseRunner("x")
