"""The plugin flavour's custom node: `tinyvim::CrossSelectiveScan`, one per SS2D.

TensorRT's ONNX parser maps an unknown op_type to the registered plugin of the same
name, reading `plugin_version` and `plugin_namespace` from the node's attributes and
passing the remaining attributes as plugin fields."""
from __future__ import annotations

import onnxscript
from onnxscript import FLOAT

PLUGIN_DOMAIN = "tinyvim"
PLUGIN_OP_TYPE = "CrossSelectiveScan"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "tinyvim"
INPUT_NAMES = ("x", "delta", "Bs", "Cs", "A", "Ds", "delta_bias")

_tinyvim_opset = onnxscript.values.Opset(PLUGIN_DOMAIN, 1)


# The return annotation is required: without it the exporter's inlining pass fails
# ("number of values and replacements must match", TOOLCHAIN.md). Types are declared
# FLOAT; fp16 graphs feed it float32 (the scan runs in float32 by contract).
@onnxscript.script(_tinyvim_opset)
def cross_selective_scan_node(x: FLOAT, delta: FLOAT, Bs: FLOAT, Cs: FLOAT, A: FLOAT, Ds: FLOAT,
                              delta_bias: FLOAT) -> FLOAT:
    return _tinyvim_opset.CrossSelectiveScan(x, delta, Bs, Cs, A, Ds, delta_bias,
                                             plugin_version="1", plugin_namespace="tinyvim")
