"""A model holding one CrossSelectiveScan node and nothing else: the unit the scan's backends
are tested and benchmarked on (ONNX Runtime's custom op, the OpenVINO extension, the portable
lowering of the same node by tinyvim.export.scan_lowering)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tinyvim.contract import SCAN_PLUGIN

PARAMS = ("A", "Ds", "delta_bias")


def scan_node_model(d: int, n: int, *, batch: int | None = None, size: tuple[int, int] | None = None,
                    params: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """x, delta, Bs, Cs -> CrossSelectiveScan(d_state=n) -> y, float32, under the contract's names.
    Batch and grid are symbolic (B, H, W) unless given. A, Ds and delta_bias are graph inputs,
    or initializers when `params` gives them (as in an export, and as the lowering needs)."""
    b = batch or "B"
    h, w = size or ("H", "W")
    dims = {"x": [b, d, h, w], "delta": [b, 4 * d, h, w], "Bs": [b, 4, n, h, w], "Cs": [b, 4, n, h, w],
            "A": [4 * d, n], "Ds": [4 * d], "delta_bias": [4 * d]}
    node = helper.make_node(SCAN_PLUGIN.op_type, list(dims), ["y"], name="scan", domain=SCAN_PLUGIN.onnx_domain,
                            **SCAN_PLUGIN.node_attributes(d_state=n))
    inits = [numpy_helper.from_array(np.asarray(params[k], np.float32), k) for k in PARAMS] if params else []
    inputs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in dims.items()
              if not (params and k in PARAMS)]
    graph = helper.make_graph([node], "cross_selective_scan", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [b, d, h, w])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(SCAN_PLUGIN.onnx_domain,
                                                                       SCAN_PLUGIN.onnx_domain_version)])
