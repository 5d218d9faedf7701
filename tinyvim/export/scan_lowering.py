"""The portable scan written directly as standard ONNX nodes.

A portable export traces the model with the scan as its plugin node (one CrossSelectiveScan
node per SS2D, tinyvim.ops.scan._plugin_node) and `expand_scan_nodes` then replaces every such
node by the log-depth scan of tinyvim.ops.scan.scan_parallel built here node by node. Tracing the
scan's own torch ops instead (torch.export, decompositions, translation, folding, onnxslim) took
about two thirds of a TinyViM-S export; building the same nodes here takes milliseconds, and the
graph is written for ONNX Runtime rather than left to the exporter: one gather for all four
inputs and directions, channel-wise splits instead of gathers, no identity padding of odd lengths.

The computation per node (see tinyvim/ops/scan.py for the contract):
  * the four inputs are concatenated per direction as channels [dt | u | B | C] and reordered
    into each direction's visiting order with even steps before odd ones; the sequence is
    padded to Lp steps at its end. Padding needs no masking: the scan is causal, so steps after
    the last real one never reach a real state, and the merge drops them.
  * dt = softplus(dt + delta_bias), decays exp(dt * A) (in (0, 1]: only ever multiplied) and
    inputs dt * u * B, in float32;
  * the top level pairs each even step with the following odd one; `_levels` halves the paired
    sequence `levels` more times (pairs adjacent along the step axis: a reshape and a split per
    level) and finishes with a plain recurrence over at most 8 steps (unrolled for a fixed size,
    one ONNX Scan loop for a symbolic size);
  * states are contracted with C per half, put back at their (h, w) positions, summed over the
    four directions; the D*u skip of the four directions is added once, as sum(D) * x.

Fixed sizes read the grid from the traced shapes and use constant index tables; symbolic sizes
(export --dynamic-size) derive the orders from reshapes, transposes and flips of the runtime map,
pad to a multiple of 8 and run the last levels as a Scan loop whose trip count is L/8.
"""
from __future__ import annotations


from tinyvim.contract import SCAN_PLUGIN
from tinyvim.errors import TinyvimError
from tinyvim.lazy import lazy_import

np = lazy_import("numpy")
onnx = lazy_import("onnx")
#: the scan's index layout, shared with the torch implementations (imports torch: loaded on use)
scan_ops = lazy_import("tinyvim.ops.scan")

#: the sequential recurrence that ends the parallel scan covers at most this many steps
MAX_TAIL = 8
#: odd-even levels below the top one in the symbolic-size lowering (the rest runs as a loop of L/8 steps)
DYNAMIC_LEVELS = 2


def fixed_plan(length: int) -> tuple[int, int]:
    """(levels, tail) for a sequence of `length` steps: the fewest odd-even levels below the top
    one that leave a recurrence of at most MAX_TAIL steps; the sequence is padded to
    tail * 2**(levels + 1) steps (56 for the 7x7 grids of a 224 input: 2 levels, tail 7)."""
    levels = 0
    while -(-length // 2 ** (levels + 1)) > MAX_TAIL:
        levels += 1
    return levels, -(-length // 2 ** (levels + 1))


class _Builder:
    """Nodes and initializers of one model's expansion; constants are shared between nodes."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.nodes: list[onnx.NodeProto] = []
        self._constants: dict[tuple, str] = {}
        self._taken = {i.name for i in graph.initializer}
        self.prefix = ""
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, value, dtype="float32") -> str:
        array = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            name = f"tinyvim_scan_const_{len(self._constants)}"
            while name in self._taken:
                name += "_"
            self._taken.add(name)
            self.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
            self._constants[key] = name
        return self._constants[key]

    def i64(self, value) -> str:
        return self.const(value, np.int64)

    def op(self, op_type: str, *inputs: str, outputs: int = 1, out: str | None = None, **attrs):
        names = [out] if out is not None else [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(onnx.helper.make_node(op_type, list(inputs), names, name=self.name(op_type), **attrs))
        return names[0] if outputs == 1 else names


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The value of `name` if it is an initializer, a Constant node's output, or a Cast of one."""
    for init in graph.initializer:
        if init.name == name:
            return onnx.numpy_helper.to_array(init)
    for node in graph.node:
        if name in node.output:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                return onnx.numpy_helper.to_array(node.attribute[0].t)
            if node.op_type == "Cast":
                source = _constant(graph, node.input[0])
                to = next(a.i for a in node.attribute if a.name == "to")
                return None if source is None else source.astype(onnx.helper.tensor_dtype_to_np_dtype(to))
            return None
    return None


def _static_dims(graph: onnx.GraphProto, name: str) -> list[int | None] | None:
    for value in (*graph.value_info, *graph.input):
        if value.name == name and value.type.tensor_type.HasField("shape"):
            return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
    return None


def expand_scan_nodes(model: onnx.ModelProto) -> int:
    """Replace (in place) every CrossSelectiveScan node of `model` by standard ONNX nodes that
    compute the same scan; returns how many were replaced. The grid size is taken from the
    traced shape of the node's x input when it is static, otherwise read at run time.
    A, Ds and delta_bias must be constants (they are the model's buffers)."""
    graph = model.graph
    builder = _Builder(graph)
    kept = []
    replaced = 0
    for node in graph.node:
        if (node.domain, node.op_type) != (SCAN_PLUGIN.onnx_domain, SCAN_PLUGIN.op_type):
            kept.append(node)
            continue
        x, delta, bs, cs, a_name, ds_name, bias_name = node.input
        params = [_constant(graph, n) for n in (a_name, ds_name, bias_name)]
        if any(p is None for p in params):
            raise TinyvimError(f"internal: scan node {node.name}: A, Ds and delta_bias must be constants")
        a, ds, bias = (p.astype(np.float32) for p in params)
        dims = _static_dims(graph, x)
        builder.prefix = f"{node.output[0]}/"
        builder.nodes = []
        if dims is not None and len(dims) == 4 and dims[2] and dims[3]:
            _lower_fixed(builder, x, delta, bs, cs, a, ds, bias, node.output[0], dims[2], dims[3])
        else:
            _lower_dynamic(builder, x, delta, bs, cs, a, ds, bias, node.output[0])
        kept.extend(builder.nodes)
        replaced += 1
    if replaced:
        del graph.node[:]
        graph.node.extend(kept)
        _drop_unused_initializers(graph)
        if not any(n.domain == SCAN_PLUGIN.onnx_domain for n in graph.node):
            imports = [o for o in model.opset_import if o.domain != SCAN_PLUGIN.onnx_domain]
            del model.opset_import[:]
            model.opset_import.extend(imports)
    return replaced


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for node in graph.node:          # names read inside subgraphs (the Scan body reads none, but be exact)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                used |= {name for sub in attr.g.node for name in sub.input}
    keep = [i for i in graph.initializer if i.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


# --------------------------------------------------------------------------- the two front ends
def _lower_fixed(g: _Builder, x, delta, bs, cs, a, ds, bias, out: str, h: int, w: int) -> None:
    """A grid of h x w known at export time: the orders are constant gather indices."""
    d, n = a.shape[0] // 4, a.shape[1]
    length = h * w
    levels, tail = fixed_plan(length)
    padded = tail * 2 ** (levels + 1)
    _, flat_in, flat_out, _ = scan_ops._layout(h, w, padded, True)
    channels = 2 * d + 2 * n
    # per direction [dt | u | B | C] channels, flattened to (B, 4L, C) for one gather of every step
    maps = g.op("Concat", g.op("Reshape", delta, g.i64([0, 4, d, length])),
                g.op("Expand", g.op("Reshape", x, g.i64([0, 1, d, length])), g.i64([1, 4, 1, 1])),
                g.op("Reshape", bs, g.i64([0, 4, n, length])), g.op("Reshape", cs, g.i64([0, 4, n, length])), axis=2)
    rows = g.op("Reshape", g.op("Transpose", maps, perm=[0, 1, 3, 2]), g.i64([0, 4 * length, channels]))
    steps = g.op("Gather", rows, g.i64(flat_in), axis=1)                               # (B, 4, Lp, C)
    y = _scan_core(g, steps, a, bias, levels, lambda av, bv: _unrolled_tail(g, av, bv, tail), half=padded // 2)
    # back to (h, w) positions (the padded slots are not read), summed over the directions
    y = g.op("Gather", g.op("Reshape", y, g.i64([0, 4 * padded, d])), g.i64(flat_out), axis=1)  # (B, 4, L, D)
    y = g.op("Transpose", g.op("ReduceSum", y, g.i64([1]), keepdims=0), perm=[0, 2, 1])    # (B, D, L)
    y = g.op("Reshape", y, g.i64([0, d, h, w]))
    _add_skip(g, y, x, ds, d, out)


def _lower_dynamic(g: _Builder, x, delta, bs, cs, a, ds, bias, out: str) -> None:
    """A grid whose size is only known at run time: orders from reshapes, a transpose and a
    flip of the map, padding to a multiple of 8 from the runtime length, and the last levels
    as one Scan loop."""
    d, n = a.shape[0] // 4, a.shape[1]
    channels = 2 * d + 2 * n
    hw = g.op("Shape", x, start=2)                                                     # [h, w]
    length = g.op("ReduceProd", hw, keepdims=1)                                        # [L]
    block = 2 ** (DYNAMIC_LEVELS + 1)
    pad = g.op("Sub", g.op("Mul", g.op("Div", g.op("Add", length, g.i64([block - 1])), g.i64([block])),
                           g.i64([block])), length)                                    # [Lp - L]
    maps = g.op("Concat", g.op("Reshape", delta, g.op("Concat", g.i64([0, 4, d]), hw, axis=0)),
                g.op("Expand", g.op("Unsqueeze", x, g.i64([1])), g.i64([1, 4, 1, 1, 1])), bs, cs, axis=2)
    # channels last first: every later move then copies whole C-long rows (a transpose whose
    # innermost axis is short is several times slower on ONNX Runtime)
    maps = g.op("Transpose", maps, perm=[0, 1, 3, 4, 2])                               # (B, 4, h, w, C)
    # directions k = 2 * reversed + column_major: row-major and column-major flattening of the
    # map, then the reversed pair flipped along the steps
    by_kind = g.op("Reshape", maps, g.op("Concat", g.i64([0, 2, 2]), hw, g.i64([channels]), axis=0))
    row_major, col_major = g.op("Split", by_kind, g.i64([1, 1]), axis=2, outputs=2)   # (B, 2, 1, h, w, C)
    col_major = g.op("Transpose", col_major, perm=[0, 1, 2, 4, 3, 5])
    flat = g.i64([0, 2, 1, -1, channels])
    seq = g.op("Concat", g.op("Reshape", row_major, flat), g.op("Reshape", col_major, flat), axis=2)  # (B,2,2,L,C)
    forward, backward = g.op("Split", seq, g.i64([1, 1]), axis=1, outputs=2)
    backward = g.op("Slice", backward, g.i64([-1]), g.i64([np.iinfo(np.int64).min]), g.i64([3]), g.i64([-1]))
    seq = g.op("Reshape", g.op("Concat", forward, backward, axis=1), g.i64([0, 4, -1, channels]))  # (B,4,L,C)
    seq = g.op("Pad", seq, g.op("Concat", g.i64([0] * 6), pad, g.i64([0]), axis=0))   # (B, 4, Lp, C)
    # even steps before odd ones
    seq = g.op("Transpose", g.op("Reshape", seq, g.i64([0, 4, -1, 2, channels])), perm=[0, 1, 3, 2, 4])
    steps = g.op("Reshape", seq, g.i64([0, 4, -1, channels]))                          # (B, 4, Lp, C)
    y = _scan_core(g, steps, a, bias, DYNAMIC_LEVELS, lambda av, bv: _loop_tail(g, av, bv, d, n), half=None)
    # undo the parity layout, drop the padding, unflip, and put both flattenings back on the map
    y = g.op("Transpose", g.op("Reshape", y, g.i64([0, 4, 2, -1, d])), perm=[0, 1, 3, 2, 4])
    y = g.op("Slice", g.op("Reshape", y, g.i64([0, 2, 2, -1, d])), g.i64([0]), length, g.i64([3]))  # (B,2,2,L,D)
    forward, backward = g.op("Split", y, g.i64([1, 1]), axis=1, outputs=2)
    y = g.op("Add", forward, g.op("Slice", backward, g.i64([-1]), g.i64([np.iinfo(np.int64).min]), g.i64([3]),
                                  g.i64([-1])))                                        # (B, 1, 2, L, D)
    row_major, col_major = g.op("Split", y, g.i64([1, 1]), axis=2, outputs=2)
    row_major = g.op("Reshape", row_major, g.op("Concat", g.i64([0]), hw, g.i64([d]), axis=0))    # (B, h, w, D)
    wh = g.op("Concat", g.i64([0]), g.op("Shape", x, start=3), g.op("Shape", x, start=2, end=3), g.i64([d]), axis=0)
    col_major = g.op("Transpose", g.op("Reshape", col_major, wh), perm=[0, 2, 1, 3])   # (B, h, w, D)
    y = g.op("Transpose", g.op("Add", row_major, col_major), perm=[0, 3, 1, 2])        # (B, D, h, w)
    _add_skip(g, y, x, ds, d, out)


def _add_skip(g: _Builder, y: str, x: str, ds: np.ndarray, d: int, out: str) -> None:
    """y + sum_k Ds_k * x: the four directions' skips, added once on the merged map."""
    g.op("Add", y, g.op("Mul", x, g.const(ds.reshape(4, d).sum(0).reshape(1, d, 1, 1))), out=out)


# --------------------------------------------------------------------------- the scan itself
def _scan_core(g: _Builder, steps: str, a: np.ndarray, bias: np.ndarray, levels: int, tail, half: int | None) -> str:
    """(B, 4, Lp, C) steps laid out evens then odds -> y (B, 4, Lp, 1, D) in the same layout;
    `half` = Lp / 2 when it is known at export time."""
    d, n = a.shape[0] // 4, a.shape[1]
    dt, u, b_in, c_in = g.op("Split", steps, g.i64([d, d, n, n]), axis=3, outputs=4)
    # softplus as relu(v) + log(1 + exp(-|v|)): no overflow branch, plain elementwise ops
    v = g.op("Add", dt, g.const(bias.reshape(4, 1, d)))
    dt = g.op("Add", g.op("Relu", v), g.op("Log", g.op("Add", g.op("Exp", g.op("Neg", g.op("Abs", v))), g.const(1.0))))
    dtu = g.op("Mul", dt, u)
    # explicit sizes where known (the most widely supported form of Split), else two equal halves
    split = dict(axis=2, num_outputs=2) if half is None else dict(axis=2)
    sizes = () if half is None else (g.i64([half, half]),)
    halves = [g.op("Split", g.op("Unsqueeze", t, g.i64([axis])), *sizes, outputs=2, **split)
              for t, axis in ((dt, 3), (dtu, 3), (b_in, 4), (c_in, 3))]
    a4 = g.const(a.reshape(4, d, n).transpose(0, 2, 1)[:, None])                       # (4, 1, N, D)
    decay = [g.op("Exp", g.op("Mul", halves[0][p], a4)) for p in (0, 1)]               # (B, 4, Lp/2, N, D)
    drive = [g.op("Mul", halves[1][p], halves[2][p]) for p in (0, 1)]
    s_odd = _levels(g, g.op("Mul", decay[1], decay[0]),
                    g.op("Add", drive[1], g.op("Mul", decay[1], drive[0])), levels, tail, d, n)
    s_even = g.op("Add", drive[0], g.op("Mul", decay[0], _shift(g, s_odd)))
    return g.op("Concat", g.op("MatMul", halves[3][0], s_even), g.op("MatMul", halves[3][1], s_odd), axis=2)


def _shift(g: _Builder, s: str) -> str:
    """s[i - 1] along the steps (axis 2 of 5), zero at i = 0."""
    return g.op("Pad", g.op("Slice", s, g.i64([0]), g.i64([-1]), g.i64([2])), g.i64([0, 0, 1, 0, 0] + [0] * 5))


def _levels(g: _Builder, a: str, b: str, levels: int, tail, d: int, n: int) -> str:
    """States of h_t = a_t h_{t-1} + b_t along axis 2 of (B, 4, T, N, D): `levels` odd-even
    levels (adjacent steps paired), then `tail` on what is left."""
    if levels == 0:
        return tail(a, b)
    pairs = g.i64([0, 4, -1, 2 * n, d])
    a_even, a_odd = g.op("Split", g.op("Reshape", a, pairs), g.i64([n, n]), axis=3, outputs=2)
    b_even, b_odd = g.op("Split", g.op("Reshape", b, pairs), g.i64([n, n]), axis=3, outputs=2)
    s_odd = _levels(g, g.op("Mul", a_odd, a_even), g.op("Add", b_odd, g.op("Mul", a_odd, b_even)),
                    levels - 1, tail, d, n)
    s_even = g.op("Add", b_even, g.op("Mul", a_even, _shift(g, s_odd)))
    return g.op("Reshape", g.op("Concat", s_even, s_odd, axis=3), g.i64([0, 4, -1, n, d]))


def _unrolled_tail(g: _Builder, a: str, b: str, steps: int) -> str:
    if steps == 1:
        return b
    sizes = g.i64([1] * steps)
    a_t = g.op("Split", a, sizes, axis=2, outputs=steps)
    b_t = g.op("Split", b, sizes, axis=2, outputs=steps)
    states = [b_t[0]]
    for t in range(1, steps):
        states.append(g.op("Add", g.op("Mul", states[-1], a_t[t]), b_t[t]))
    return g.op("Concat", *states, axis=2)


def _loop_tail(g: _Builder, a: str, b: str, d: int, n: int) -> str:
    """One ONNX Scan along axis 2 (trip count = the runtime length)."""
    zeros = g.op("ConstantOfShape", g.op("Concat", g.op("Shape", b, end=2), g.i64([n, d]), axis=0),
                 value=onnx.numpy_helper.from_array(np.zeros(1, np.float32)))
    step = [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in ("state", "a_t", "b_t")]
    # `state` first in the product: OpenVINO 2026.4 mis-binds the body's inputs otherwise
    # (see tinyvim.ops.scan._loop_step)
    helper = onnx.helper
    body = helper.make_graph(
        [helper.make_node("Mul", ["state", "a_t"], ["decayed"]), helper.make_node("Add", ["decayed", "b_t"], ["next"]),
         helper.make_node("Identity", ["next"], ["y_t"])],
        "scan_step", step, [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in ("next", "y_t")])
    _, states = g.op("Scan", zeros, a, b, outputs=2, body=body, num_scan_inputs=2,
                     scan_input_axes=[2, 2], scan_output_axes=[2])
    return states
