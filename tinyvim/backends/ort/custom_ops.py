"""Run a plugin-flavour ONNX on ONNX Runtime CPU, with the CrossSelectiveScan node
computed by our PyTorch scan through onnxruntime-extensions.

onnxruntime-extensions registers Python ops only in the domain `ai.onnx.contrib`, so the
session gets a copy of the graph with the plugin nodes moved there (an onnx-graphsurgeon
edit, tinyvim.backends.ort.graph_edit). This is a correctness path (tests, `validate` of plugin graphs), not a fast one."""
from __future__ import annotations

import os


from tinyvim.backends.ort.graph_edit import edit_graph
from tinyvim.backends.ort.loader import import_onnxruntime
from tinyvim.contract import SCAN_PLUGIN
from tinyvim.lazy import import_optional, lazy_import

np = lazy_import("numpy")
onnx = lazy_import("onnx")
torch = lazy_import("torch")
ops = lazy_import("tinyvim.ops")

CONTRIB_DOMAIN = "ai.onnx.contrib"


def import_ort_extensions():
    return import_optional("onnxruntime_extensions", what="onnxruntime-extensions (to run a plugin-flavour ONNX on CPU)")


_registered = False


def _register() -> None:
    """Register the Python implementation once per process."""
    global _registered
    if _registered:
        return
    extensions = import_ort_extensions()
    PyCustomOpDef, onnx_op = extensions.PyCustomOpDef, extensions.onnx_op

    # Inputs, outputs and attributes as the contract declares them (the node carries float32).
    attr_types = {"INT": PyCustomOpDef.dt_int64, "FLOAT": PyCustomOpDef.dt_float, "STRING": PyCustomOpDef.dt_string}
    attrs = {"plugin_version": PyCustomOpDef.dt_string, "plugin_namespace": PyCustomOpDef.dt_string,
             **{f.name: attr_types[f.onnx_type] for f in SCAN_PLUGIN.fields}}

    @onnx_op(op_type=SCAN_PLUGIN.op_type, inputs=[PyCustomOpDef.dt_float] * len(SCAN_PLUGIN.inputs),
             outputs=[PyCustomOpDef.dt_float] * len(SCAN_PLUGIN.outputs), attrs=attrs)
    def _cross_selective_scan(*arrays, **node_attrs):
        shapes = dict(zip(SCAN_PLUGIN.input_names, (a.shape for a in arrays)))
        fields = {f.name: int(node_attrs[f.name]) for f in SCAN_PLUGIN.fields}
        try:   # what the TensorRT plugin checks at configure time, checked here too
            SCAN_PLUGIN.bind_dims(shapes, **fields)
        except ValueError as exc:
            raise ValueError(f"{SCAN_PLUGIN.op_type}: {exc}") from None
        args = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in arrays]
        with torch.no_grad():
            return ops.scan_parallel(*args).numpy()

    _registered = True


def to_contrib_domain(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with the plugin nodes in ai.onnx.contrib instead of the contract's
    domain (whose opset import goes; graphsurgeon imports the contrib one), metadata kept."""
    def move(graph) -> None:
        for node in graph.nodes:
            if (node.domain, node.op) == (SCAN_PLUGIN.onnx_domain, SCAN_PLUGIN.op_type):
                node.domain = CONTRIB_DOMAIN
        graph.import_domains = [d for d in graph.import_domains if d.domain != SCAN_PLUGIN.onnx_domain]

    return edit_graph(model, move)


def plugin_session(model: onnx.ModelProto | str | os.PathLike, sess_options=None, providers=None):
    """An onnxruntime.InferenceSession that runs a plugin-flavour graph on CPU."""
    ort = import_onnxruntime()
    get_library_path = import_ort_extensions().get_library_path
    _register()
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), format="protobuf")
    so = sess_options or ort.SessionOptions()
    so.register_custom_ops_library(get_library_path())
    return ort.InferenceSession(to_contrib_domain(model).SerializeToString(), so,
                                providers=providers or ["CPUExecutionProvider"])
