"""Run a plugin-flavour ONNX on ONNX Runtime CPU, with the CrossSelectiveScan node
computed by our PyTorch scan through onnxruntime-extensions.

onnxruntime-extensions registers Python ops only in the domain `ai.onnx.contrib`, so the
session gets a copy of the graph with the plugin nodes moved there (TOOLCHAIN.md). This
is a correctness path (tests, `validate` of plugin graphs), not a fast one."""
from __future__ import annotations

import os

import numpy as np
import onnx

from tinyvim.errors import TinyvimError
from tinyvim.export.plugin_op import PLUGIN_DOMAIN, PLUGIN_OP_TYPE

CONTRIB_DOMAIN = "ai.onnx.contrib"
_registered = False


def _register() -> None:
    """Register the Python implementation once per process."""
    global _registered
    if _registered:
        return
    try:
        from onnxruntime_extensions import PyCustomOpDef, onnx_op
    except ImportError:
        raise TinyvimError("running a plugin-flavour ONNX on CPU needs onnxruntime-extensions: "
                           "pip install onnxruntime-extensions (or export with --scan portable)") from None
    import torch

    from tinyvim.ops import scan_parallel

    @onnx_op(op_type=PLUGIN_OP_TYPE, inputs=[PyCustomOpDef.dt_float] * 7, outputs=[PyCustomOpDef.dt_float],
             attrs={"plugin_version": PyCustomOpDef.dt_string, "plugin_namespace": PyCustomOpDef.dt_string})
    def _cross_selective_scan(x, delta, Bs, Cs, A, Ds, delta_bias, **attrs):
        args = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in (x, delta, Bs, Cs, A, Ds, delta_bias)]
        with torch.no_grad():
            return scan_parallel(*args).numpy()

    _registered = True


def has_plugin_nodes(model: onnx.ModelProto) -> bool:
    return any(n.domain == PLUGIN_DOMAIN and n.op_type == PLUGIN_OP_TYPE for n in model.graph.node)


def to_contrib_domain(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with the plugin nodes (and their opset import) in ai.onnx.contrib."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        if node.domain == PLUGIN_DOMAIN and node.op_type == PLUGIN_OP_TYPE:
            node.domain = CONTRIB_DOMAIN
    kept = [o for o in out.opset_import if o.domain != PLUGIN_DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(kept)
    if not any(o.domain == CONTRIB_DOMAIN for o in kept):
        out.opset_import.add(domain=CONTRIB_DOMAIN, version=1)
    return out


def plugin_session(model: onnx.ModelProto | str | os.PathLike, sess_options=None, providers=None):
    """An onnxruntime.InferenceSession that runs a plugin-flavour graph on CPU."""
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    _register()
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    so = sess_options or ort.SessionOptions()
    so.register_custom_ops_library(get_library_path())
    return ort.InferenceSession(to_contrib_domain(model).SerializeToString(), so,
                                providers=providers or ["CPUExecutionProvider"])
