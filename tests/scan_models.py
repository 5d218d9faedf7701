"""Small ONNX models with the scan plugin node, for tests that need no real export."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tinyvim.contract import SCAN_PLUGIN, ExportMetadata


def scan_onnx(path, *, precision="fp32", size=64, namespace=SCAN_PLUGIN.namespace):
    """images -> Conv -> CrossSelectiveScan -> Softplus -> ReduceMean -> logits, tinyvim metadata:
    one layer of each kind the precision policy treats differently (not a working network)."""
    hw = [size, size] if size else ["height", "width"]
    attrs = SCAN_PLUGIN.node_attributes(d_state=8)
    attrs["plugin_namespace"] = namespace
    nodes = [helper.make_node("Conv", ["images", "w"], ["c"], name="node_Conv_0"),
             helper.make_node(SCAN_PLUGIN.op_type, ["c"] * 4 + ["A", "Ds", "db"], ["y"], name="node_scan_1",
                              domain=SCAN_PLUGIN.onnx_domain, **attrs),
             helper.make_node("Softplus", ["y"], ["s"], name="node_softplus_2"),
             helper.make_node("ReduceMean", ["s"], ["logits"], name="n3")]
    inits = [numpy_helper.from_array(np.zeros(s, np.float32), n) for n, s in
             (("w", (4, 3, 1, 1)), ("A", (16, 8)), ("Ds", (16,)), ("db", (16,)))]
    graph = helper.make_graph(nodes, "scan", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                            ["batch", 3, *hw])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20),
                                                    helper.make_opsetid(SCAN_PLUGIN.onnx_domain, 1)])
    meta = ExportMetadata("s", input_size=(size, size) if size else None, batch=None, scan="plugin",
                          precision=precision)
    for k, v in meta.to_props().items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, path)
    return path
