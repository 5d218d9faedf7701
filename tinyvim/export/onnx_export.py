"""Export a re-parameterized TinyViM to ONNX: portable (standard ops) or plugin flavour."""
from __future__ import annotations

import collections
import contextlib
import functools
import io
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable


from tinyvim import __version__
from tinyvim.contract import (
    DEFAULT_OPSET,
    FP16,
    FP32,
    INPUT_MULTIPLE,
    INPUT_NAME,
    MAX_BATCH,
    MAX_IMAGE_SIDE,
    MIN_OPSET,
    PLUGIN_SCAN,
    PORTABLE_SCAN,
    SCAN_PLUGIN,
    ExportMetadata,
    InputSpec,
    ModelSpec,
    Precision,
    ScanFlavour,
    check_export_precision,
    check_scan,
    output_names,
)
from tinyvim.errors import TinyvimError
from tinyvim.export.scan_lowering import expand_scan_nodes
from tinyvim.utils import atomic_output, check_output_path, file_sha256
from tinyvim.lazy import lazy_import

np = lazy_import("numpy")
onnx = lazy_import("onnx")
onnxscript_optimizer = lazy_import("onnxscript.optimizer")
torch = lazy_import("torch")
nn = lazy_import("torch.nn")
models = lazy_import("tinyvim.model")
ops = lazy_import("tinyvim.ops")


@dataclass
class ExportResult:
    path: Path
    metadata: ExportMetadata
    num_nodes: int
    op_counts: dict[str, int]
    seconds: float
    size_bytes: int
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)


def with_checkpoint_digest(model: ModelSpec) -> ModelSpec:
    """`model` with its checkpoint's sha256 filled in (what the export metadata records)."""
    if model.checkpoint is None or model.checkpoint_sha256:
        return model
    return model.with_(checkpoint=str(Path(model.checkpoint).resolve()),
                       checkpoint_sha256=file_sha256(model.checkpoint))


def read_metadata(model: onnx.ModelProto | str | os.PathLike) -> ExportMetadata | None:
    """The validated tinyvim metadata of an ONNX model (None when it has none)."""
    source = "ONNX model" if isinstance(model, onnx.ModelProto) else os.fspath(model)
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), format="protobuf", load_external_data=False)
    return ExportMetadata.from_props({p.key: p.value for p in model.metadata_props}, source=source)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Nodes by op type (custom-domain ops as domain::type), most frequent first."""
    c = collections.Counter((f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type)
                            for n in model.graph.node)
    return dict(c.most_common())


def newest_opset() -> int:
    """The newest opset an export can target: torch's exporter builds at its own opset and the
    onnxscript version converter lifts the graph from there, so the limit is the smaller of
    what that converter reaches and what the installed onnx (checker, shape inference) knows.
    Above it the converter silently leaves old ops behind and the checker fails after tracing."""
    try:
        from onnxscript.version_converter._version_converter import (
            SUPPORTED_MAX_ONNX_OPSET as converter_max,
        )
    except ImportError:        # a converter that does not say: only the opset we test
        converter_max = DEFAULT_OPSET
    return min(onnx.defs.onnx_opset_version(), int(converter_max))


def check_export_args(*, scan: str, precision: str, opset: int | None) -> int:
    """The export's own arguments, before anything is built (the model and the input checked
    themselves when their ModelSpec / InputSpec was made); returns the opset to use. The opset
    must lie between MIN_OPSET and the newest the installed onnx knows (its checker and shape
    inference refuse anything newer - after minutes of tracing).

    Every CLI export meets this twice: at the boundary that must refuse before any work
    (plan_export; `export --fmt triton` before the repository's checks) and again in export_onnx,
    which library callers (profile, benchmark, the repository writer, user code) call directly.
    The answer depends only on the arguments and the installed onnx, so it is worked out once
    (_checked_opset's cache); a refusal raises every time and is never cached."""
    return _checked_opset(scan, precision, opset)


@functools.lru_cache(maxsize=32, typed=True)    # typed: 20 and 20.0 or True are different answers
def _checked_opset(scan: str, precision: str, opset: int | None) -> int:
    check_scan(scan)
    check_export_precision(precision)
    opset = DEFAULT_OPSET if opset is None else opset
    newest = newest_opset()
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise TinyvimError(f"--opset {opset} is too old: TinyViM needs opset {MIN_OPSET} or newer")
    if opset > newest:
        raise TinyvimError(f"--opset {opset} is newer than this installation exports (onnx {onnx.__version__} and "
                           f"its exporter reach opset {newest}): use --opset {MIN_OPSET}..{newest}")
    return opset


#: portable-scan lowerings written directly as ONNX nodes (tinyvim.export.scan_lowering); any
#: other scan implementation name is traced from its torch ops
DIRECT_LOWERINGS = ("parallel", "dynamic")

#: example size traced for a dynamic-size export: H != W so that the tracer keeps them apart
DYNAMIC_SIZE_EXAMPLE = (224, 256)


def dynamic_shapes_for(*, dynamic_batch: bool, dynamic_size: bool) -> dict | None:
    """torch.export dynamic_shapes of the image input: batch 1..MAX_BATCH, and H, W each
    32 * k with k in 1..MAX_IMAGE_SIDE/32, so that the multiple-of-32 rule is part of the
    traced program (run_trunk's check_input_size holds for every size without a guard)."""
    dims = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    if dynamic_size:
        top = MAX_IMAGE_SIDE // INPUT_MULTIPLE
        dims[2] = INPUT_MULTIPLE * torch.export.Dim("height_over_32", min=1, max=top)
        dims[3] = INPUT_MULTIPLE * torch.export.Dim("width_over_32", min=1, max=top)
    return {"x": dims} if dims else None


def _torch_export(model: nn.Module, example: torch.Tensor, *, scan: str, dynamic_batch: bool, opset: int,
                  output_names: list[str], lowering: str = "parallel", dynamic_size: bool = False) -> onnx.ModelProto:
    """torch.onnx.export (dynamo) + constant folding; one-line TinyvimError on failure."""
    kwargs = dict(dynamo=True, opset_version=opset, input_names=[INPUT_NAME], output_names=output_names,
                  optimize=False, verbose=False)
    shapes = dynamic_shapes_for(dynamic_batch=dynamic_batch, dynamic_size=dynamic_size)
    if shapes:
        kwargs["dynamic_shapes"] = shapes
    # The scan becomes the contract's custom node (tinyvim.ops.scan._plugin_node); a portable
    # export with the parallel lowering then writes that node out as standard ops
    # (tinyvim.export.scan_lowering): tracing the scan's torch ops cost two thirds of an export.
    # Other lowerings (e.g. sequential, for comparisons) trace the implementation's own ops.
    direct = scan == PORTABLE_SCAN and lowering in DIRECT_LOWERINGS
    traced = scan == PORTABLE_SCAN and not direct
    ctx = ops.scan_implementation(lowering, inline=True) if traced else ops.scan_as_onnx_node()
    # The exporter is chatty (progress lines, deprecation and torchvision warnings): keep
    # our own summary readable, and surface its text only if it fails.
    sink = io.StringIO()
    with ctx, torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(sink), \
            _quiet_loggers("torch.onnx", "torch.export", "torch._dynamo", "onnxscript"):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(model, (example,), **kwargs)
            # The exporter's full optimizer spends most of an export (minutes on 2 cores)
            # in pattern rewrites that onnxslim repeats anyway; constant folding is the
            # part we need (it also turns the exporter's float64 Resize scales into float32).
            onnxscript_optimizer.fold_constants(program.model)
            onnxscript_optimizer.remove_unused_nodes(program.model)
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types; all mean "export failed"
            raise TinyvimError(f"ONNX export failed: {str(exc).strip().splitlines()[0][:300]}") from exc
    proto = program.model_proto
    if direct:
        expand_scan_nodes(proto)
    return proto


@contextlib.contextmanager
def _environ(name: str, value: str):
    """Set an environment variable for the block unless the user set it (onnxslim reads its
    iteration limit from ONNXSLIM_MAX_ITER only)."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


@contextlib.contextmanager
def _quiet_loggers(*names):
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in names]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def cleanup_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding, dead-node and identity-chain removal with onnxslim.

    onnxslim was picked over onnxsim (needs onnxruntime at simplify time and a compiled
    wheel) and onnx-graphsurgeon (folding only, no pattern clean-up): it is pure Python,
    keeps custom-domain nodes, and on TinyViM removes what the exporter leaves behind.

    One pass, without onnxslim's own shape inference: by default it repeats optimisation and
    shape inference until a pass changes nothing, and on every TinyViM export (S/B/L, both
    flavours, fixed/dynamic batch and size, fp16, backbone) the first pass already gives the
    final node count; the export runs shape inference once afterwards. Saves 1-2 s an export."""
    import onnxslim
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), warnings.catch_warnings(), _environ("ONNXSLIM_MAX_ITER", "1"):
        warnings.simplefilter("ignore")
        try:
            return onnxslim.slim(model, skip_fusion_patterns=None, no_shape_infer=True)
        except Exception as exc:  # noqa: BLE001 - keep the unslimmed graph rather than fail the export
            logging.getLogger(__name__).warning("onnxslim clean-up skipped: %s", exc)
            return model


def export_onnx(output: str | os.PathLike, model: ModelSpec = ModelSpec(), inputs: InputSpec = InputSpec(), *,
                scan: ScanFlavour = PORTABLE_SCAN, precision: Precision = FP32, opset: int | None = None,
                network: nn.Module | None = None, lowering: str = "parallel", cleanup: bool = True,
                log: Callable[[str], None] | None = None) -> ExportResult:
    """Export the re-parameterized TinyViM `model` for `inputs` to `output` (written atomically).

    Input `images` (B, 3, H, W) float32; outputs `logits` (B, 1000) or `feat0..feat3`; a None
    size or batch in `inputs` is a dynamic dimension (a dynamic size: any multiples of 32 up to
    MAX_IMAGE_SIDE from one file; the parallel scan then takes its orders and padding from the
    runtime shape and ends in an ONNX Scan loop). `network` may pass an already-built unfused
    TinyViM (then `model` only feeds the metadata). `lowering` picks the portable graph's scan:
    "parallel" (log depth, the default; written directly as ONNX nodes by
    tinyvim.export.scan_lowering) or the name of a scan implementation whose torch ops are
    traced instead, e.g. "sequential" (one unrolled step per position; bench/onnx_cpu.py
    compares them). Every argument and the output path are checked before the model is built.
    Returns an ExportResult with the node census."""
    opset = check_export_args(scan=scan, precision=precision, opset=opset)
    check_output_path(output)
    if inputs.dynamic_size:
        if scan == PORTABLE_SCAN and lowering not in DIRECT_LOWERINGS:
            raise TinyvimError(f"the {lowering!r} scan lowering needs a fixed input size: drop --dynamic-size")
        lowering = "dynamic"
    log = log or (lambda msg: None)
    start = time.perf_counter()
    model = with_checkpoint_digest(model)
    deploy = models.reparameterize(network if network is not None else models.build_model(model))
    if precision == FP16:
        deploy = models.FP16Wrapper(deploy)
    names = output_names(model.backbone)
    example_batch = 2 if inputs.dynamic_batch else inputs.batch   # batch 1 would pin the dimension
    trace_size = DYNAMIC_SIZE_EXAMPLE if inputs.dynamic_size else inputs.size
    example = torch.randn(example_batch, 3, *trace_size, generator=torch.Generator().manual_seed(0))
    log(f"tracing TinyViM-{model.variant.upper()} ({scan} scan, {precision}, {inputs.describe()}, opset {opset})")
    proto = _torch_export(deploy, example, scan=scan, dynamic_batch=inputs.dynamic_batch, opset=opset,
                          output_names=names, lowering=lowering, dynamic_size=inputs.dynamic_size)
    if cleanup:
        log(f"cleaning up the graph ({len(proto.graph.node)} nodes)")
        proto = cleanup_graph(proto)
    uniform_constants_to_fills(proto)
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    metadata = ExportMetadata.build(model, inputs, scan=scan, precision=precision, opset=opset)
    del proto.metadata_props[:]
    for key, value in metadata.to_props().items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name, proto.producer_version = "tinyvim", __version__
    _verify(proto, scan, names)
    with atomic_output(output, suffix=".onnx") as tmp:
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
    path = Path(output)
    return ExportResult(path=path, metadata=metadata, num_nodes=len(proto.graph.node), op_counts=op_counts(proto),
                        seconds=time.perf_counter() - start, size_bytes=path.stat().st_size,
                        input_names=[i.name for i in proto.graph.input], output_names=names)


#: uniform constants at least this large are computed at load time instead of stored
UNIFORM_FILL_MIN_ELEMENTS = 256


def uniform_constants_to_fills(model: onnx.ModelProto, min_elements: int = UNIFORM_FILL_MIN_ELEMENTS) -> int:
    """Replace each large initializer whose elements are all equal and which only feeds Concat
    nodes by a ConstantOfShape node; returns how many were replaced.

    Under a static batch the exporter folds a traced scan's identity padding (ones and zeros
    of shape (B, 4, 1, N, D), tinyvim.ops.scan._odd_even_scan) into initializers, so the file
    grew with the batch (486 MiB at batch 5000 vs 21.7 MiB at batch 1). As a fill the padding
    costs a few bytes whatever the batch; runtimes fold it back in memory at load. The scan
    written as ONNX nodes (the default lowering) has no such padding; traced lowerings may.
    Weights are never touched: only inputs of Concat qualify."""
    consumers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    graph_outputs = {o.name for o in model.graph.output}
    keep, fills = [], []
    for init in model.graph.initializer:
        count = int(np.prod(init.dims)) if init.dims else 1
        if (count < min_elements or consumers.get(init.name) != {"Concat"} or init.name in graph_outputs
                or init.data_location == onnx.TensorProto.EXTERNAL):
            keep.append(init)
            continue
        values = onnx.numpy_helper.to_array(init)
        first = values.reshape(-1)[:1]
        if not (values == first).all():      # NaN never equals itself: such constants stay
            keep.append(init)
            continue
        shape_name = f"{init.name}__shape"
        fills.append((onnx.numpy_helper.from_array(np.asarray(values.shape, np.int64), shape_name),
                      onnx.helper.make_node("ConstantOfShape", [shape_name], [init.name], name=f"{init.name}__fill",
                                            value=onnx.numpy_helper.from_array(first.astype(values.dtype)))))
    if fills:
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep + [shape for shape, _ in fills])
        nodes = [fill for _, fill in fills] + list(model.graph.node)   # fills first: topological order
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return len(fills)


def _verify(proto: onnx.ModelProto, scan: str, names: list[str]) -> None:
    """The flavour's promises, checked on the graph itself before anything is written."""
    custom = [n for n in proto.graph.node if n.domain not in ("", "ai.onnx")]
    if scan == PORTABLE_SCAN and custom:
        raise TinyvimError(f"internal: portable export produced non-standard nodes {sorted({n.op_type for n in custom})}")
    if scan == PLUGIN_SCAN:
        odd = [n for n in custom if (n.domain, n.op_type) != (SCAN_PLUGIN.onnx_domain, SCAN_PLUGIN.op_type)]
        if odd or not custom:
            raise TinyvimError(f"internal: plugin export has unexpected custom nodes {[n.op_type for n in odd]}")
        for node in custom:
            problems = plugin_node_problems(node)
            if problems:
                raise TinyvimError(f"internal: plugin node {node.name} breaks the plugin contract: {'; '.join(problems)}")
    if [i.name for i in proto.graph.input] != [INPUT_NAME] or [o.name for o in proto.graph.output] != names:
        raise TinyvimError("internal: exported graph has unexpected input/output names")




def plugin_node_problems(node: onnx.NodeProto) -> list[str]:
    """What is wrong with a CrossSelectiveScan node by the declared contract (empty when
    nothing): input count, plugin_version / plugin_namespace, every field present with its
    declared ONNX attribute type and range, no undeclared attribute."""
    spec = SCAN_PLUGIN
    problems = []
    if len(node.input) != len(spec.inputs) or len(node.output) != len(spec.outputs):
        problems.append(f"{len(node.input)} inputs / {len(node.output)} outputs, the contract has "
                        f"{len(spec.inputs)} / {len(spec.outputs)}")
    attrs = {a.name: a for a in node.attribute}
    for key, want in (("plugin_version", spec.version), ("plugin_namespace", spec.namespace)):
        got = onnx.helper.get_attribute_value(attrs[key]).decode() if key in attrs else None
        if got != want:
            problems.append(f"{key} is {got!r}, the contract says {want!r}")
    for f in spec.fields:
        if f.name not in attrs:
            problems.append(f"attribute {f.name} is missing")
            continue
        kind = onnx.AttributeProto.AttributeType.Name(attrs[f.name].type)
        if kind != f.onnx_type:
            problems.append(f"attribute {f.name} is {kind}, the contract says {f.onnx_type}")
        elif kind == "INT" and not f.minimum <= attrs[f.name].i <= f.maximum:
            problems.append(f"attribute {f.name}={attrs[f.name].i} is outside {f.minimum}..{f.maximum}")
    extra = set(attrs) - {"plugin_version", "plugin_namespace"} - {f.name for f in spec.fields}
    if extra:
        problems.append(f"undeclared attribute(s) {sorted(extra)}")
    return problems
