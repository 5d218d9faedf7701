"""The TensorRT plugin as TensorRT sees it, against TensorRT's real headers (10.16 and 11.1).

The plugin library is built against each version's public headers with -Werror (headers
only: there is no libnvinfer here), then tinyvim_trt_contract_check (tests/csrc/trt_contract_check.cpp,
compiled against the same headers) loads it the way IPluginRegistry::loadLibrary does and
drives it with the CrossSelectiveScan nodes of real plugin-flavour exports by the ONNX
parser's rules and in the builder's order. The declared contract (tinyvim.contract.SCAN_PLUGIN)
is the reference for the library's identity and fields.

The plugin's enqueue runs too, on the CPU: the plugin and the driver are also compiled (with g++,
no CUDA) against each version's headers on top of the CUDA kernel's own source built on our CUDA-on-CPU
runtime (tests/cuda_on_cpu), and every node is enqueued on guard-paged host buffers holding the values it gets
in the export, compared with what the ONNX Runtime custom op computed for it.

Needs ../shared/third_party/tensorrt (see its README); the CMake-built library also needs cmake
and nvcc (the plugin links the CUDA kernel); each is skipped, with
the reason, where what it needs is missing.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
import pytest

from tinyvim.contract import SCAN_PLUGIN, TRT_FIELD_TYPE_VALUES
from tinyvim.ops.reference import random_scan_inputs
from tinyvim.plugins.cpu_twin import cross_selective_scan_cpu
from cuda_on_cpu import build as cpu_build
from cuda_on_cpu import cases as cpu_cases
from cuda_on_cpu import device as cpu_device
from cuda_on_cpu.cases import REF_TOL
from cuda_on_cpu.storage import from_storage, rounded, to_storage
from tinyvim.plugins.build import build, find_nvcc

HEADERS = Path(__file__).resolve().parents[2] / "shared" / "third_party" / "tensorrt"
VERSIONS = ("10.16", "11.1")
TARGETS = ["tinyvim_trt_plugin", "tinyvim_trt_plugin_autoreg", "tinyvim_trt_contract_check"]
#: every variant, batch mode and export precision (64x64: the node's contract does not depend on the size)
# Every variant, both batch modes and both precisions, without their product (which doubled the
# export time and added no node shape: B's and L's scan dims differ from S's by the variant alone;
# batch mode and precision change the node independently - a symbolic batch dim, casts around it -
# and the same way for every variant). Each export is ~10 s of CPU.
# The plugin nodes of an fp16 export are float32 (casts around them), so S's 16-bit variants below
# are made from its fp32 nodes; B's export is the fp16 one.
EXPORTS = [("s", False, "fp32"), ("s", True, "fp32"), ("b", True, "fp16"), ("l", False, "fp32")]
BATCH_RANGE = (1, 2, 8)    # min, opt, max of a dynamic batch, as an engine profile would give

pytestmark = pytest.mark.skipif(
    not all((HEADERS / v / "include" / "NvInfer.h").is_file() for v in VERSIONS),
    reason=f"TensorRT {' and '.join(VERSIONS)} headers not found under {HEADERS} "
           "(../shared/third_party, see its README)")


def _cmake_build_missing() -> str | None:
    if not shutil.which("cmake"):
        return "cmake not found"
    if find_nvcc() is None:
        return "nvcc not found: the CMake-built TensorRT plugin links the CUDA kernel"
    return None


# --------------------------------------------------------------------- nodes as the driver reads them
@dataclass
class Tensor:
    name: str
    dtype: str                 # ONNX TensorProto type name
    dims: list                 # ints and symbol names


@dataclass
class Node:
    name: str
    op: str
    attrs: dict = field(default_factory=dict)      # name -> (ONNX type name, [values])
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    syms: dict = field(default_factory=dict)       # symbol -> (min, opt, max)
    data: str = ""                                 # enqueue mode: folder of the input buffers


def scan_nodes(model: onnx.ModelProto, tag: str) -> list[Node]:
    """The CrossSelectiveScan nodes of an export with their attributes and tensor types/shapes."""
    g = model.graph
    infos = {v.name: v for v in [*g.value_info, *g.input, *g.output]}
    inits = {i.name: i for i in g.initializer}

    def tensor(name):
        if name in inits:
            return Tensor(name, onnx.TensorProto.DataType.Name(inits[name].data_type), list(inits[name].dims))
        t = infos[name].type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
        return Tensor(name, onnx.TensorProto.DataType.Name(t.elem_type), dims)

    nodes = []
    for i, n in enumerate(x for x in g.node if x.op_type == SCAN_PLUGIN.op_type):
        node = Node(f"{tag}/{i}", n.op_type, inputs=[tensor(x) for x in n.input], outputs=[tensor(x) for x in n.output])
        for a in n.attribute:
            value = onnx.helper.get_attribute_value(a)
            values = value if isinstance(value, list) else [value]
            node.attrs[a.name] = (onnx.AttributeProto.AttributeType.Name(a.type),
                                  [v.decode() if isinstance(v, bytes) else v for v in values])
        node.syms = {d: BATCH_RANGE for t in node.inputs for d in t.dims if isinstance(d, str)}
        nodes.append(node)
    return nodes


def symbolic_hw(node: Node) -> Node:
    """The node with its H and W dimensions made symbolic (a dynamic-size export), found by the
    contract's symbolic dims."""
    sym = {"H": "height", "W": "width"}

    def convert(t: Tensor, spec) -> Tensor:
        return replace(t, dims=[sym.get(s, d) for s, d in zip(spec.dims, t.dims)])

    ins = [convert(t, spec) for t, spec in zip(node.inputs, SCAN_PLUGIN.inputs)]
    outs = [convert(t, spec) for t, spec in zip(node.outputs, SCAN_PLUGIN.outputs)]
    h, w = node.inputs[0].dims[2], node.inputs[0].dims[3]
    syms = {**node.syms, "height": (1, h, 2 * h), "width": (1, w, 2 * w)}
    return replace(node, name=node.name + "/symbolic_hw", inputs=ins, outputs=outs, syms=syms)


def with_dtype(node: Node, dtype: str) -> Node:
    """The node fed `dtype` (ONNX name) wherever the contract allows it (x and the tensors tied
    to x's type), as a reduced-precision TensorRT build may feed it."""
    contract = {"FLOAT16": "float16", "BFLOAT16": "bfloat16"}[dtype]

    def convert(t: Tensor, spec) -> Tensor:
        return replace(t, dtype=dtype) if contract in spec.dtypes else t

    return replace(node, name=f"{node.name}/{dtype}",
                   inputs=[convert(t, spec) for t, spec in zip(node.inputs, SCAN_PLUGIN.inputs)],
                   outputs=[convert(t, spec) for t, spec in zip(node.outputs, SCAN_PLUGIN.outputs)])


def write_spec(nodes: list[Node], path: Path) -> Path:
    lines = []
    for n in nodes:
        lines += [f"node {n.name}", f"op {n.op}"]
        for key, (kind, values) in n.attrs.items():
            text = [str(v) if str(v) else "-" for v in values]
            assert not any(" " in t for t in text), (key, values)
            lines.append(f"attr {key} {kind} {' '.join(text)}")
        for kind, tensors in (("input", n.inputs), ("output", n.outputs)):
            lines += [f"{kind} {t.name} {t.dtype} {' '.join(map(str, t.dims))}" for t in tensors]
        lines += [f"sym {s} {lo} {opt} {hi}" for s, (lo, opt, hi) in n.syms.items()]
        if n.data:
            assert " " not in n.data, n.data
            lines.append(f"data {n.data}")
        lines.append("end")
    path.write_text("\n".join(lines) + "\n")
    return path


def run_driver(built, *args) -> list[str]:
    driver = built["tinyvim_trt_contract_check"] if "tinyvim_trt_contract_check" in built else built["driver"]
    proc = subprocess.run([str(driver), *map(str, args)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.splitlines()


def results(lines: list[str]) -> dict[str, str]:
    """'node NAME ok ...' / 'node NAME error MSG' -> {NAME: 'ok ...' | 'error MSG'}."""
    return {ln.split(" ", 2)[1]: ln.split(" ", 2)[2] for ln in lines if ln.startswith("node ")}


# --------------------------------------------------------------------- fixtures (built and exported once)
@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, plugin_onnx, plugin_dyn_onnx):
    """The TensorRT targets built against each version's headers (CMake in two threads, started
    first; one real architecture keeps nvcc short, and the host code, which is what the headers
    check, is the same for every architecture), and the plugin-flavour exports (EXPORTS) at 64x64:
    S's two are the run's shared files (tests/conftest.py), B's and L's are made here while the
    builds run, in this process (a spawned export process paid an import of torch and a cold
    tracer: ~20 s of CPU an export, against ~10 here)."""
    from tinyvim.contract import InputSpec, ModelSpec
    from tinyvim.export import export_onnx
    root = tmp_path_factory.mktemp("trt")
    with ThreadPoolExecutor(len(VERSIONS)) as threads:
        builds = {v: threads.submit(build, root / v, tensorrt_root=str(HEADERS / v), cuda_arch="75-real", jobs=1,
                                    targets=TARGETS) for v in VERSIONS} if _cmake_build_missing() is None else {}
        paths = {("s", False, "fp32"): plugin_onnx, ("s", True, "fp32"): plugin_dyn_onnx}
        for key in EXPORTS:
            if key not in paths:
                paths[key] = export_onnx(root / f"{key[0]}_{'dyn' if key[1] else 'b1'}_{key[2]}.onnx",
                                         ModelSpec(key[0]), InputSpec((64, 64), None if key[1] else 1),
                                         precision=key[2], scan="plugin").path
        yield builds, paths


@pytest.fixture(scope="module")
def built(artifacts, request):
    if _cmake_build_missing():
        pytest.skip(_cmake_build_missing())
    result = artifacts[0][request.param].result()
    assert set(TARGETS) <= set(result.built), result
    return result


@pytest.fixture(scope="module")
def export_paths(artifacts):
    return {key: Path(path) for key, path in artifacts[1].items()}


@pytest.fixture(scope="module")
def exports(export_paths):
    return {key: onnx.load(str(path), load_external_data=False) for key, path in export_paths.items()}


@pytest.fixture(scope="module")
def nodes(exports):
    return {key: scan_nodes(model, "_".join(map(str, key))) for key, model in exports.items()}


# --------------------------------------------------------------------- tests
@pytest.mark.parametrize("built", VERSIONS, indirect=True)
def test_library_builds_against_the_real_headers(built, request):
    """-Werror build of the three targets against that version's headers (not some other
    NvInfer.h on the system: the summary names the version CMake read)."""
    version = request.node.callspec.params["built"]
    summary = (built.build_dir / "tinyvim_build_summary.txt").read_text()
    for target in TARGETS:
        assert f"built {target} " in summary and f"(TensorRT {version}.0 headers)" in summary


@pytest.mark.parametrize("built", VERSIONS, indirect=True)
def test_creator_matches_the_declared_contract(built):
    lines = run_driver(built.built, "describe", built.built["tinyvim_trt_plugin"])
    creators = [ln.split()[1:] for ln in lines if ln.startswith("creator ")]
    assert creators == [[SCAN_PLUGIN.op_type, SCAN_PLUGIN.version, SCAN_PLUGIN.namespace, "PLUGIN", "CREATOR_V3ONE"]]
    fields = [ln.split()[1:] for ln in lines if ln.startswith("field ")]
    assert fields == [[f.name, str(TRT_FIELD_TYPE_VALUES[f.trt_type]), str(f.length)] for f in SCAN_PLUGIN.fields]


@pytest.mark.parametrize("built", VERSIONS, indirect=True)
def test_every_exported_node_goes_through_the_parser_and_builder_calls(built, nodes, tmp_path):
    """createPlugin(kBUILD) from the parser's fields, getOutputDataTypes, getOutputShapes (the
    ONNX output shape, symbolic batch and H/W included), supportsFormatCombination for the
    graph's types, configurePlugin, getWorkspaceSize, onShapeChange, and the serialize ->
    createPlugin(kRUNTIME) round trip, for every scan node of every export (20 nodes), plus
    symbolic-H/W and 16-bit variants of some."""
    every = [n for key in EXPORTS for n in nodes[key]]
    assert len(every) == 5 * len(EXPORTS)                     # 5 SS2D blocks per variant
    dynamic = [n for key in EXPORTS if key[1] for n in nodes[key]]
    assert all(n.inputs[0].dims[0] == "batch" and n.outputs[0].dims[0] == "batch" for n in dynamic)
    hw = [symbolic_hw(n) for n in nodes[("l", False, "fp32")]]
    # the exported nodes are float32 (casts around them in fp16 graphs); the plugin also takes
    # the 16-bit types its contract allows, as a weakly typed fp16/bf16 build may feed them
    half = [with_dtype(n, dt) for n in nodes[("s", True, "fp32")] for dt in ("FLOAT16", "BFLOAT16")]
    extra = hw + half
    lines = run_driver(built.built, "nodes", built.built["tinyvim_trt_plugin"], write_spec(every + extra, tmp_path / "s"))
    got = results(lines)
    assert len(got) == len(every) + len(extra)
    failed = {k: v for k, v in got.items() if not v.startswith("ok ")}
    assert not failed, failed
    assert not [ln for ln in lines if ln.startswith("warning ")]
    assert all(n.attrs["d_state"] == ("INT", [8]) for n in every)   # what the driver was fed
    # the driver compared the returned shapes with the graph's; spot-check its report
    assert got[f"{hw[0].name}"].startswith("ok outputs=FLOAT(1,16,height,width)")
    assert got[f"{nodes[('s', True, 'fp32')][0].name}"].startswith("ok outputs=FLOAT(batch,12,2,2)")
    assert got[f"{half[1].name}"].startswith("ok outputs=BFLOAT16(batch,12,2,2)")
    assert all(n.inputs[4].dtype == "FLOAT" for n in half)           # A stays float32


WRONG_NODES = {
    # what is wrong -> (edit of a real node, what must be reported)
    "d_state missing": (lambda n: n.attrs.pop("d_state"),
                        "Could not create the plugin. CrossSelectiveScan: attribute d_state is missing"),
    "d_state a FLOAT": (lambda n: n.attrs.update(d_state=("FLOAT", [8.0])),
                        "Could not create the plugin. CrossSelectiveScan: attribute d_state must be an integer"),
    "d_state != N": (lambda n: n.attrs.update(d_state=("INT", [16])),
                     "configurePlugin failed: CrossSelectiveScan: d_state = 16 (the node's attribute) but Bs has N = 8"),
    "d_state out of range": (lambda n: n.attrs.update(d_state=("INT", [17])),
                             "CrossSelectiveScan: d_state = 17 is not supported (1..16)"),
    "other namespace": (lambda n: n.attrs.update(plugin_namespace=("STRING", [""])),
                        "Plugin not found, are the plugin name, version, and namespace correct?"),
    "integer x": (lambda n: setattr(n.inputs[0], "dtype", "INT32"),
                  "getOutputDataTypes failed: CrossSelectiveScan: x must be float32, float16 or bfloat16"),
}


@pytest.mark.parametrize("built", VERSIONS, indirect=True)
def test_wrong_nodes_fail_with_the_plugin_message(built, nodes, tmp_path):
    import copy
    base = nodes[("s", False, "fp32")][0]
    wrong = []
    for what, (edit, _) in WRONG_NODES.items():
        n = copy.deepcopy(base)
        n.name = what.replace(" ", "_")
        edit(n)
        wrong.append(n)
    lines = run_driver(built.built, "nodes", built.built["tinyvim_trt_plugin"], write_spec(wrong, tmp_path / "s"))
    got = results(lines)
    for what, (_, message) in WRONG_NODES.items():
        assert got[what.replace(" ", "_")].startswith("error ") and message in got[what.replace(" ", "_")], (what, got)
    # the parser only warns about a missing field; the plugin is what refuses it
    assert "warning d_state_missing Attribute d_state not found in plugin node!" in lines


@pytest.mark.parametrize("built", VERSIONS, indirect=True)
def test_only_the_autoreg_library_registers_on_load(built):
    """libtinyvim_trt_plugin.so registers nothing when dlopened (so IPluginRegistry::loadLibrary,
    which refuses already-registered creators, can load it); the autoreg one registers the
    creator once, in the contract's namespace, with the registry it finds in the process."""
    lines = run_driver(built.built, "register", built.built["tinyvim_trt_plugin"],
                       built.built["tinyvim_trt_plugin_autoreg"])
    assert "registrations_after_plugin 0" in lines and "registrations_after_autoreg 1" in lines
    assert f"registered {SCAN_PLUGIN.op_type} {SCAN_PLUGIN.version} {SCAN_PLUGIN.namespace}" in lines


# --------------------------------------------------------------------- enqueue on the CPU
@pytest.fixture(scope="module")
def on_cpu(request):
    """The plugin and the driver built with g++ against that version's headers, on the kernel's
    own source run on the CPU (cuda_on_cpu.build.build_trt_on_cpu; cached like the CPU twin)."""
    return cpu_build.build_trt_on_cpu(HEADERS / request.param / "include")


def _ort_options():
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")   # no core stolen from the next test
    return so


def scan_io(path: Path, batch: int) -> list[tuple[list[np.ndarray], np.ndarray]]:
    """(inputs, output) of every CrossSelectiveScan node of the export at `path`, in graph order, from
    one ONNX Runtime run on a seeded image batch with the node computed by the ORT custom op
    (tinyvim.backends.ort.custom_ops): the node's inputs and output become extra graph outputs."""
    from onnx import numpy_helper

    from tinyvim.backends.ort.custom_ops import plugin_session
    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    infos = {v.name: v for v in [*g.value_info, *g.input, *g.output]}
    scan = [n for n in g.node if n.op_type == SCAN_PLUGIN.op_type]
    present = {o.name for o in g.output}
    for name in dict.fromkeys(x for n in scan for x in [*n.input, *n.output]):
        if name not in inits and name not in present:
            g.output.append(infos[name])
    image = g.input[0]
    shape = [d.dim_value if d.HasField("dim_value") else batch for d in image.type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    sess = plugin_session(model, sess_options=_ort_options())
    values = {**inits, **dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {image.name: x})))}
    return [([values[i] for i in n.input], values[n.output[0]]) for n in scan]


def ort_custom_op(node: onnx.NodeProto, inputs: list[np.ndarray]) -> np.ndarray:
    """The ORT custom op on `inputs` (float32), through a one-node graph with `node`'s attributes."""
    from onnx import TensorProto, helper

    from tinyvim.backends.ort.custom_ops import plugin_session
    names = [f"in{i}" for i in range(len(inputs))]
    single = helper.make_node(node.op_type, names, ["y"], domain=node.domain)
    single.attribute.extend(node.attribute)
    graph = helper.make_graph([single], "scan", [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape)
                                                 for n, a in zip(names, inputs)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, inputs[0].shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid(node.domain, 1)])
    sess = plugin_session(model, sess_options=_ort_options())
    return sess.run(None, {n: np.ascontiguousarray(a, np.float32) for n, a in zip(names, inputs)})[0]


STORAGE = {"FLOAT": "float32", "FLOAT16": "float16", "BFLOAT16": "bfloat16"}
STORAGE_NUMPY = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}   # bfloat16: bit patterns


@pytest.fixture(scope="module")
def enqueue_jobs(nodes, export_paths):
    """(node, its inputs as float32, the ORT custom op's output, dtype) for every scan node of the 4
    exports (20), the symbolic-H/W variants of L's (5) and float16 / bfloat16 variants of S's (10).
    Inputs are the values each node gets in its export (one ORT run each, batch = the profile's opt
    for a dynamic batch); the 16-bit variants get x/delta/Bs/Cs rounded to their type, and their
    reference is the custom op on those same rounded values."""
    io = {key: scan_io(export_paths[key], BATCH_RANGE[1]) for key in EXPORTS}
    jobs = [(n, ins, y, "float32") for key in EXPORTS for n, (ins, y) in zip(nodes[key], io[key])]
    jobs += [(symbolic_hw(n), ins, y, "float32") for n, (ins, y) in zip(nodes[("l", False, "fp32")],
                                                                         io[("l", False, "fp32")])]
    key = ("s", True, "fp32")
    protos = [n for n in onnx.load(str(export_paths[key]), load_external_data=False).graph.node
              if n.op_type == SCAN_PLUGIN.op_type]
    for n, proto, (ins, _) in zip(nodes[key], protos, io[key]):
        for onnx_dtype, dtype in (("FLOAT16", "float16"), ("BFLOAT16", "bfloat16")):
            low = [rounded(a, dtype) if k < 4 else a for k, a in enumerate(ins)]
            jobs.append((with_dtype(n, onnx_dtype), low, ort_custom_op(proto, low), dtype))
    return jobs


@pytest.mark.parametrize("on_cpu", VERSIONS, indirect=True)
def test_enqueue_of_every_exported_node_matches_the_ort_custom_op(on_cpu, enqueue_jobs, tmp_path):
    """Every node of enqueue_jobs through the driver's `enqueue` mode: the parser's and builder's
    calls, then createPlugin(kRUNTIME) from the serialized fields, attachToContext, onShapeChange and
    enqueue on host buffers, i.e. the plugin's real enqueue running the kernel's real source.
    Compared with the ORT custom op's output for the same node: float32 within 1e-5 of max|y|
    (observed ~2e-7: summation order only), 16-bit within float32 noise plus half an ulp of the
    output type (cuda_on_cpu.cases.REF_TOL)."""
    jobs = enqueue_jobs
    spec = []
    for j, (n, ins, _, _) in enumerate(jobs):
        folder = tmp_path / str(j)
        folder.mkdir()
        for k, (t, a) in enumerate(zip(n.inputs, ins)):
            (folder / f"in{k}.bin").write_bytes(to_storage(a, STORAGE[t.dtype]).tobytes())
        spec.append(replace(n, data=str(folder)))
    lines = run_driver(on_cpu, "enqueue", on_cpu["plugin"], write_spec(spec, tmp_path / "spec"))
    got = results(lines)
    assert len(got) == len(jobs) == 5 * len(EXPORTS) + 5 + 10
    failed = {k: v for k, v in got.items() if not v.startswith("ok ")}
    assert not failed, failed
    worst = {}
    for j, (n, _, ref, dtype) in enumerate(jobs):
        report = got[n.name]
        # one launch per node (batch <= 65535), on the stream TensorRT gave enqueue, no overrun
        assert report.endswith("enqueued launches=1 stream=0x5eed overruns=0 refused=0"), (n.name, report)
        raw = (tmp_path / str(j) / "out0.bin").read_bytes()
        y = from_storage(np.frombuffer(raw, dtype=STORAGE_NUMPY[dtype]), dtype)
        assert y.size == ref.size and np.abs(ref).max() > 0, n.name
        err = float(np.abs(y.reshape(ref.shape) - ref).max() / np.abs(ref).max())
        assert err <= REF_TOL[dtype], (n.name, dtype, err)
        worst[dtype] = max(worst.get(dtype, 0.0), err)
    print(f"\nenqueue vs ORT custom op, max rel error: {worst}")


def synthetic_node(name: str, d: int, n: int, dims: dict, syms: dict | None = None) -> Node:
    """A scan node as the exporter writes it (plugin_version, plugin_namespace, d_state = n: the
    contract's), on float32 tensors shaped by the contract's dims: D and N given, B/H/W from `dims`
    (an int, or a symbol with its (min, opt, max) in `syms`)."""
    values = {"D": d, "4D": 4 * d, "4": 4, "N": n, **dims}
    ins = [Tensor(f"{name}.{s.name}", "FLOAT", [values[x] for x in s.dims]) for s in SCAN_PLUGIN.inputs]
    outs = [Tensor(f"{name}.{s.name}", "FLOAT", [values[x] for x in s.dims]) for s in SCAN_PLUGIN.outputs]
    attrs = {"plugin_version": ("STRING", [SCAN_PLUGIN.version]), "plugin_namespace": ("STRING", [SCAN_PLUGIN.namespace]),
             "d_state": ("INT", [n])}
    return Node(name, SCAN_PLUGIN.op_type, attrs, ins, outs, dict(syms or {}))


#: name -> (D, dims, syms): nodes real exports at 64x64 never have. The driver enqueues at the
#: profile's opt shape with a workspace of exactly getWorkspaceSize's bytes (from the profile's max).
ENQUEUE_NODES = {
    "nonsquare_5x9": (20, {"B": 1, "H": 5, "W": 9}, {}),
    "workspace_16x20_b2": (24, {"B": 2, "H": 16, "W": 20}, {}),                   # L = 320: global workspace
    "dynamic_opt_is_max": (24, {"B": "batch", "H": "height", "W": "width"},       # the exact size is the need
                           {"batch": (1, 2, 2), "height": (1, 17, 17), "width": (1, 19, 19)}),
    "dynamic_max_needs_workspace": (40, {"B": "batch", "H": "height", "W": "width"},   # opt fits in smem
                                    {"batch": (1, 2, 8), "height": (4, 6, 20), "width": (4, 7, 24)}),
}


@pytest.mark.parametrize("on_cpu", VERSIONS[-1:], indirect=True)
def test_enqueue_of_nonsquare_workspace_and_dynamic_nodes(on_cpu, tmp_path):
    """The plugin's enqueue where the exported nodes never go: a non-square map, an L whose
    accumulator needs the global workspace, and dynamic profiles whose getWorkspaceSize must cover
    the MAX shape (asserted equal to the ABI's need there), enqueued at opt with a workspace of
    exactly that size in a guard-paged buffer (an overrun faults and names it). Output: bit for bit
    the CPU twin's (the same kernel source and step header), and within REF_TOL of the float64
    reference on the first and last channel."""
    kernel = cpu_device.load_library(on_cpu["kernel"])
    spec, inputs, want_ws = [], {}, {}
    for j, (name, (d, dims, syms)) in enumerate(ENQUEUE_NODES.items()):
        node = synthetic_node(name, d, 8, dims, syms)
        opt = [v if isinstance(v, int) else syms[v][1] for v in (dims["B"], dims["H"], dims["W"])]
        top = [v if isinstance(v, int) else syms[v][2] for v in (dims["B"], dims["H"], dims["W"])]
        want_ws[name] = kernel.tinyvim_cross_scan_cuda_workspace_size(top[0], d, top[1], top[2], 8, 0)
        inp = random_scan_inputs(opt[0], d, opt[1], opt[2], 8, seed=j, dtype=np.float32)
        inp["delta_bias"] = np.random.default_rng(j).uniform(-8, 8, 4 * d).astype(np.float32)
        folder = tmp_path / str(j)
        folder.mkdir()
        for k, key in enumerate(("x", "delta", "Bs", "Cs", "A", "Ds", "delta_bias")):
            (folder / f"in{k}.bin").write_bytes(np.ascontiguousarray(inp[key], np.float32).tobytes())
        inputs[name] = (inp, folder)
        spec.append(replace(node, data=str(folder)))
    got = results(run_driver(on_cpu, "enqueue", on_cpu["plugin"], write_spec(spec, tmp_path / "spec")))
    assert want_ws["workspace_16x20_b2"] > 0 and want_ws["dynamic_max_needs_workspace"] > 0
    assert kernel.tinyvim_cross_scan_cuda_workspace_size(2, 40, 6, 7, 8, 0) == 0     # opt alone needs none
    for name, (inp, folder) in inputs.items():
        report = got[name]
        assert report.startswith("ok ") and f" workspace={want_ws[name]} " in report, (name, report)
        assert report.endswith("enqueued launches=1 stream=0x5eed overruns=0 refused=0"), (name, report)
        y = np.frombuffer((folder / "out0.bin").read_bytes(), np.float32).reshape(inp["x"].shape)
        assert np.array_equal(y, cross_selective_scan_cpu(**inp)), name
        d = inp["x"].shape[1]
        err = cpu_cases.rel_error(y[:, [0, d - 1]], cpu_cases.reference_subset(inp, channels=(0, d - 1)))
        assert err <= REF_TOL["float32"], (name, err)
