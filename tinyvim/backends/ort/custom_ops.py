"""Run a plugin-flavour ONNX on ONNX Runtime CPU, the CrossSelectiveScan node computed through
onnxruntime-extensions' Python custom op by one of two routes:

- "fast" (the default): our compiled fast CPU scan (tinyvim.plugins.cpu_fast), called through
  ctypes on the numpy arrays the op is handed.
- "reference": the PyTorch parallel scan - the check the fast route is compared against.

TINYVIM_ORT_SCAN=fast|reference picks the route for a process; plugin_session(route=...) for
one session. onnxruntime-extensions registers Python ops only in the domain `ai.onnx.contrib`,
so the session gets a copy of the graph with the plugin nodes moved there (an
onnx-graphsurgeon edit, tinyvim.backends.ort.graph_edit), under the route's op type.

What a call costs besides the kernel (bench/ort_node_overhead.py takes it apart):
onnxruntime-extensions copies each input into a new numpy array (a memcpy each, in C++), and its
stock invoker hands the result back as `y.flatten().tolist()`: one Python float per element,
which C++ then casts back into an array before copying it into ORT's output. That list was most
of the route's overhead (it grows with the tensor). `_invoke` replaces the invoker for our ops
only and hands the flat float32 array over as it is (pybind11 casts an ndarray without a copy);
every other Python op goes on through the stock invoker. The input copies and the final memcpy
are the extension's and stay. A native ORT custom-op library would avoid them but needs ORT's C
API header, which neither the onnxruntime wheel nor a Debian 12 package ships (docs/cpu-scan.md).
"""
from __future__ import annotations

import functools
import os

from tinyvim.backends.ort.graph_edit import edit_graph
from tinyvim.backends.ort.loader import import_onnxruntime
from tinyvim.contract import SCAN_PLUGIN
from tinyvim.errors import TinyvimError
from tinyvim.lazy import import_optional, lazy_import

np = lazy_import("numpy")
onnx = lazy_import("onnx")
torch = lazy_import("torch")
ops = lazy_import("tinyvim.ops")
cpu_fast = lazy_import("tinyvim.plugins.cpu_fast")

CONTRIB_DOMAIN = "ai.onnx.contrib"
ROUTE_ENV = "TINYVIM_ORT_SCAN"
#: route -> the op type its Python op is registered under in the contrib domain
ROUTES = {"fast": SCAN_PLUGIN.op_type, "reference": SCAN_PLUGIN.op_type + "Reference"}


def scan_route(route: str | None = None) -> str:
    """`route`, else $TINYVIM_ORT_SCAN, else "fast"; a one-line error for an unknown name."""
    name = route or os.environ.get(ROUTE_ENV) or "fast"
    if name not in ROUTES:
        source = "route" if route else ROUTE_ENV
        raise TinyvimError(f"{source}={name!r} is not a scan route for ONNX Runtime's plugin node: "
                           f"choose {' or '.join(ROUTES)}")
    return name


def _reference_scan(*arrays: np.ndarray) -> np.ndarray:
    args = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in arrays]
    with torch.no_grad():
        return ops.scan_parallel(*args).numpy()


def _fast_scan(*arrays: np.ndarray) -> np.ndarray:
    return cpu_fast.cross_selective_scan_fast(*arrays, threads=cpu_fast.default_threads())


_SCANS = {"fast": _fast_scan, "reference": _reference_scan}


def import_ort_extensions():
    return import_optional("onnxruntime_extensions", what="onnxruntime-extensions (to run a plugin-flavour ONNX on CPU)")


@functools.lru_cache(maxsize=256)
def _check_node(shapes: tuple[tuple[int, ...], ...], fields: tuple[tuple[str, int], ...]) -> None:
    """What the TensorRT plugin checks at configure time, checked here too; once per distinct
    (shapes, attributes): a session calls each node with the same shapes every inference.
    A ValueError is not cached, so a bad call fails every time."""
    try:
        SCAN_PLUGIN.bind_dims(dict(zip(SCAN_PLUGIN.input_names, shapes)), **dict(fields))
    except ValueError as exc:
        raise ValueError(f"{SCAN_PLUGIN.op_type}: {exc}") from None


#: id -> Opdef of the ops registered here: the ones `_invoke` answers itself
_own_ops: dict[int, object] = {}
#: onnxruntime-extensions' own invoker, which `_invoke` hands every other op to
_stock_invoker = None


def _invoke(op_id, feed, attributes):
    """onnxruntime-extensions' Python-op invoker (called from its C++ kernel with the input
    arrays and the attributes as strings; returns (id, shape, data, ...) per output), with the
    result of our ops handed back as a flat float32 array instead of a Python list."""
    opdef = _own_ops.get(op_id)
    if opdef is None:
        return _stock_invoker(op_id, feed, attributes)
    y = opdef(*feed, **opdef.cast_attributes(attributes))
    # C++ memcpys data into ORT's output of `shape`: it must be C-contiguous float32 (a no-op here)
    return op_id, y.shape, np.ascontiguousarray(y, dtype=np.float32).reshape(-1)


def use_array_results(enabled: bool = True) -> bool:
    """Install `_invoke` as onnxruntime-extensions' invoker (enabled) or put its stock one back.
    Returns whether `_invoke` is now installed: False when this onnxruntime-extensions has no
    such hook (then its stock path stays: the same results, slower)."""
    global _stock_invoker, _array_results
    extensions = import_ort_extensions()
    install = getattr(extensions.PyCustomOpDef, "install_hooker", None)
    stock = getattr(getattr(extensions, "_ocos", None), "_on_pyop_invocation", None)
    if install is None or stock is None:
        return False
    _stock_invoker = stock
    install(_invoke if enabled else stock)
    _array_results = enabled
    return enabled


def array_results() -> bool:
    """Whether our ops' results go back through `_invoke` (as arrays)."""
    return _array_results


_registered = False
_array_results = False


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

    def checked(route):
        def op(*arrays, **node_attrs):
            _check_node(tuple(a.shape for a in arrays),
                        tuple((f.name, int(node_attrs[f.name])) for f in SCAN_PLUGIN.fields))
            return _SCANS[route](*arrays)     # looked up per call: a test may wrap it
        return op

    for route, op_type in ROUTES.items():
        opdef = onnx_op(op_type=op_type, inputs=[PyCustomOpDef.dt_float] * len(SCAN_PLUGIN.inputs),
                        outputs=[PyCustomOpDef.dt_float] * len(SCAN_PLUGIN.outputs), attrs=attrs)(checked(route))
        _own_ops[id(opdef)] = opdef       # the id its C++ kernel calls the invoker with
    use_array_results()
    _registered = True


def to_contrib_domain(model: onnx.ModelProto, route: str = "fast") -> onnx.ModelProto:
    """A copy of `model` with the plugin nodes in ai.onnx.contrib (as the route's op type)
    instead of the contract's domain (whose opset import goes; graphsurgeon imports the contrib
    one), metadata kept."""
    def move(graph) -> None:
        for node in graph.nodes:
            if (node.domain, node.op) == (SCAN_PLUGIN.onnx_domain, SCAN_PLUGIN.op_type):
                node.domain = CONTRIB_DOMAIN
                node.op = ROUTES[route]
        graph.import_domains = [d for d in graph.import_domains if d.domain != SCAN_PLUGIN.onnx_domain]

    return edit_graph(model, move)


def plugin_session(model: onnx.ModelProto | str | os.PathLike, sess_options=None, providers=None,
                   route: str | None = None):
    """An onnxruntime.InferenceSession that runs a plugin-flavour graph on CPU, the scan by
    `route` (see scan_route)."""
    route = scan_route(route)
    ort = import_onnxruntime()
    get_library_path = import_ort_extensions().get_library_path
    _register()
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), format="protobuf")
    so = sess_options or ort.SessionOptions()
    so.register_custom_ops_library(get_library_path())
    return ort.InferenceSession(to_contrib_domain(model, route).SerializeToString(), so,
                                providers=providers or ["CPUExecutionProvider"])
