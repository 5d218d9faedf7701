"""The portable scan written as ONNX nodes (tinyvim.export.scan_lowering): one CrossSelectiveScan
node expanded in a one-node model, run on ONNX Runtime against the independent float64 loop."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tinyvim.contract import SCAN_PLUGIN
from tinyvim.errors import TinyvimError
from tinyvim.export.scan_lowering import MAX_TAIL, expand_scan_nodes, fixed_plan
from tinyvim.ops.reference import cross_selective_scan_reference, random_scan_inputs

# (batch, D, h, w, N): the model's 7x7 grid, h != w, a single row, a single position, N = 16 and 4,
# a 11x13 grid (143 steps: 4 levels), and 32x32 (1024 steps: the stability case of test_scan.py).
SHAPES = [(3, 12, 7, 7, 8), (1, 5, 3, 4, 8), (1, 3, 1, 6, 8), (1, 6, 1, 1, 8), (2, 9, 4, 3, 16),
          (1, 13, 11, 13, 4), (1, 3, 32, 32, 8)]
# float32 graph vs float64 loop: inputs rounded to float32 (6e-8 relative) through contracting
# recurrences; observed <= 3e-7 relative, the same 1e-5 contract as the torch implementations.
TOL = 1e-5


def _scan_model(inputs: dict, dynamic: bool) -> onnx.ModelProto:
    """A model holding one plugin node, as a traced export has it: A, Ds, delta_bias initializers,
    the grid static (a fixed-size export) or symbolic (--dynamic-size)."""
    d, n = inputs["x"].shape[1], inputs["A"].shape[1]
    h, w = ("h", "w") if dynamic else inputs["x"].shape[2:]
    shapes = {"x": ["batch", d, h, w], "delta": ["batch", 4 * d, h, w], "Bs": ["batch", 4, n, h, w],
              "Cs": ["batch", 4, n, h, w]}
    graph = helper.make_graph(
        [helper.make_node(SCAN_PLUGIN.op_type, [*shapes, "A", "Ds", "delta_bias"], ["y"], domain=SCAN_PLUGIN.onnx_domain,
                          name="scan")],
        "scan", [helper.make_tensor_value_info(k, TensorProto.FLOAT, s) for k, s in shapes.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shapes["x"])],
        [numpy_helper.from_array(inputs[k].astype(np.float32), k) for k in ("A", "Ds", "delta_bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20),
                                                    helper.make_opsetid(SCAN_PLUGIN.onnx_domain, 1)])
    model.ir_version = 10
    return model


def _run(model: onnx.ModelProto, inputs: dict) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {k: inputs[k].astype(np.float32) for k in ("x", "delta", "Bs", "Cs")})[0]


@pytest.mark.parametrize("dynamic", [False, True], ids=["fixed", "dynamic"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_expanded_node_matches_float64_reference(shape, dynamic):
    b, d, h, w, n = shape
    inputs = random_scan_inputs(b, d, h, w, n, seed=sum(shape))
    model = _scan_model(inputs, dynamic)
    assert expand_scan_nodes(model) == 1
    onnx.checker.check_model(model, full_check=True)
    assert {node.domain for node in model.graph.node} == {""}
    assert [o.domain for o in model.opset_import] == [""]
    assert sorted(i.name for i in model.graph.initializer if i.name in ("A", "Ds", "delta_bias")) == []
    # a fixed grid uses constant orders and no loop; a symbolic one reads them from the runtime shape
    ops = {node.op_type for node in model.graph.node}
    assert ("Scan" in ops) == dynamic and ("Shape" in ops) == dynamic
    out = _run(model, inputs)
    ref = cross_selective_scan_reference(**inputs)
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() / np.abs(ref).max() <= TOL


def test_one_dynamic_graph_serves_every_size():
    """The symbolic-grid graph built once, then run at grids whose padding differs (L = 49, 64, 80, 6)."""
    base = random_scan_inputs(1, 4, 7, 7, seed=1)
    model = _scan_model(base, dynamic=True)
    expand_scan_nodes(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for h, w in [(7, 7), (8, 8), (10, 8), (2, 3)]:
        inputs = dict(random_scan_inputs(2, 4, h, w, seed=h * w), A=base["A"], Ds=base["Ds"], delta_bias=base["delta_bias"])
        out = session.run(None, {k: inputs[k].astype(np.float32) for k in ("x", "delta", "Bs", "Cs")})[0]
        ref = cross_selective_scan_reference(**inputs)
        assert np.abs(out - ref).max() / np.abs(ref).max() <= TOL, (h, w)


@pytest.mark.parametrize("length,plan", [(1, (0, 1)), (6, (0, 3)), (49, (2, 7)), (64, (2, 8)), (80, (3, 5)),
                                         (1024, (6, 8))])
def test_fixed_plan_pads_little_and_ends_in_a_short_recurrence(length, plan):
    levels, tail = fixed_plan(length)
    assert (levels, tail) == plan
    padded = tail * 2 ** (levels + 1)
    assert tail <= MAX_TAIL and length <= padded < length + 2 ** (levels + 1)


def test_parameters_must_be_constants():
    inputs = random_scan_inputs(1, 4, 3, 3, seed=0)
    model = _scan_model(inputs, dynamic=False)
    model.graph.input.append(helper.make_tensor_value_info("A", TensorProto.FLOAT, [16, 8]))
    del model.graph.initializer[0]                       # A now a graph input, not a buffer
    with pytest.raises(TinyvimError, match="A, Ds and delta_bias must be constants"):
        expand_scan_nodes(model)
