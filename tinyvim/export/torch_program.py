"""What the PyTorch 2 formats (`export --fmt pt2|aoti|torchscript|executorch`) start from: the
re-parameterized model, traced with the scan inlined as standard aten ops, and the tinyvim
metadata as one JSON text that travels inside each artifact.

The scan is inlined (the parallel lowering's gathers, products and sums; the `dynamic` one for a
symbolic H x W) rather than kept as the `tinyvim::cross_selective_scan` op, so that a file loads
where tinyvim is not installed: libtorch in C++, Triton's PyTorch backend, an ExecuTorch runtime
on a phone. The op itself is right for torch.compile (tinyvim/ops/scan.py); a program holding it
would only load in a process that imported tinyvim first.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tinyvim.contract import (
    DEFAULT_OPSET,
    FP32,
    INPUT_NAME,
    PORTABLE_SCAN,
    ExportMetadata,
    InputSpec,
    ModelSpec,
    check_export_precision,
    check_scan,
    output_names,
)
from tinyvim.errors import TinyvimError
from tinyvim.export.onnx_export import DYNAMIC_SIZE_EXAMPLE, ExportResult, dynamic_shapes_for, with_checkpoint_digest
from tinyvim.lazy import lazy_import
from tinyvim.utils import check_output_path

torch = lazy_import("torch")
models = lazy_import("tinyvim.model")
ops = lazy_import("tinyvim.ops")

#: the `export --fmt` values traced from the model by torch (the scan inlined)
TORCH_FORMATS = ("pt2", "aoti", "torchscript", "executorch")
#: those of them that keep a symbolic batch / H x W (torch.export Dims); the others are compiled or
#: traced for one shape
DYNAMIC_TORCH_FORMATS = ("pt2",)


def check_torch_format_args(fmt: str, inputs: InputSpec, *, scan: str, precision: str,
                            opset: int | None = None) -> None:
    """The arguments a PyTorch 2 format takes, before anything is built (one-line errors)."""
    check_scan(scan)
    check_export_precision(precision)
    if scan != PORTABLE_SCAN:
        raise TinyvimError(f"--fmt {fmt} inlines the scan as standard ops: drop --scan {scan} (it is for ONNX)")
    if precision != FP32:
        raise TinyvimError(f"--fmt {fmt} is written in fp32 only: drop --precision {precision}")
    if opset is not None:
        raise TinyvimError(f"--opset applies to the ONNX formats (onnx, openvino, ort, triton), not --fmt {fmt}")
    if (inputs.dynamic_batch or inputs.dynamic_size) and fmt not in DYNAMIC_TORCH_FORMATS:
        raise TinyvimError(f"--fmt {fmt} has a fixed input shape: drop --dynamic-batch/--dynamic-size "
                           f"({', '.join(DYNAMIC_TORCH_FORMATS)} and onnx take them)")


def example_input(inputs: InputSpec):
    """The traced example: batch 2 and H != W where those dims are symbolic (an example of 1, or
    H == W, would pin or merge them)."""
    b = 2 if inputs.dynamic_batch else inputs.batch
    size = DYNAMIC_SIZE_EXAMPLE if inputs.dynamic_size else inputs.size
    return torch.randn(b, 3, *size, generator=torch.Generator().manual_seed(0))


def inline_scan(dynamic_size: bool = False):
    """The block within which the model traces its scan as standard ops: the parallel scan's
    index tables are constants of one grid size, the dynamic one derives them from the shape."""
    return ops.scan_implementation("dynamic" if dynamic_size else "parallel", inline=True)


@contextlib.contextmanager
def quiet_tracing():
    """torch.export / jit.trace print progress and warnings: our summary stays readable, their
    text surfaces only in a failure's message."""
    sink = io.StringIO()
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in ("torch.export", "torch._dynamo",
                                                                           "torch._inductor", "torch.fx")]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def export_program(deploy, example, *, dynamic_batch: bool = False, dynamic_size: bool = False):
    """torch.export of `deploy` with the scan inlined (aten ops only: no tinyvim op in the graph)."""
    shapes = dynamic_shapes_for(dynamic_batch=dynamic_batch, dynamic_size=dynamic_size)
    with inline_scan(dynamic_size), torch.no_grad(), quiet_tracing():
        try:
            return torch.export.export(deploy, (example,), dynamic_shapes=shapes)
        except Exception as exc:  # noqa: BLE001 - torch.export raises many types; all mean "export failed"
            raise TinyvimError(f"torch.export failed: {first_line(exc)}") from exc


def first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def metadata_text(metadata: ExportMetadata) -> str:
    """The metadata as the JSON object of its metadata_props (keys and texts as in ONNX)."""
    return json.dumps(metadata.to_props(), indent=1)


def parse_metadata_text(text: str | bytes | None, *, source: str) -> ExportMetadata | None:
    """ExportMetadata from `metadata_text` output (None when the artifact carries none); a
    one-line TinyvimError when it is not a JSON object of texts or a value is out of range."""
    if text is None or text in ("", b""):
        return None
    try:
        props = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TinyvimError(f"{source}: its tinyvim metadata is not JSON ({exc}): re-export the model") from None
    if not isinstance(props, Mapping) or not all(isinstance(v, str) for v in props.values()):
        raise TinyvimError(f"{source}: its tinyvim metadata is not an object of texts: re-export the model")
    return ExportMetadata.from_props(props, source=source)


def prepare_source(fmt: str, model: ModelSpec, inputs: InputSpec, *, scan: str = PORTABLE_SCAN,
                   precision: str = FP32, opset: int | None = None, network=None):
    """Checked arguments -> (deploy model, traced example, metadata): the prologue of every PyTorch
    format. `network`: an already-built unfused TinyViM (then `model` only feeds the metadata)."""
    check_torch_format_args(fmt, inputs, scan=scan, precision=precision, opset=opset)
    model = with_checkpoint_digest(model)
    deploy = models.reparameterize(network if network is not None else models.build_model(model)).eval()
    # opset has no meaning here: the metadata records the ONNX default
    metadata = ExportMetadata.build(model, inputs, scan=PORTABLE_SCAN, precision=FP32, opset=DEFAULT_OPSET)
    return deploy, example_input(inputs), metadata


@dataclass
class TorchSource:
    """What every PyTorch format's writer starts from (`begin_export`)."""
    deploy: object
    example: object
    metadata: ExportMetadata
    log: Callable[[str], None]
    start: float


def begin_export(fmt: str, output, model: ModelSpec, inputs: InputSpec, log: Callable[[str], None] | None,
                 **kwargs) -> TorchSource:
    """The output path checked, the arguments checked, the model built (prepare_source)."""
    check_output_path(output)
    start = time.perf_counter()
    deploy, example, metadata = prepare_source(fmt, model, inputs, **kwargs)
    return TorchSource(deploy, example, metadata, log or (lambda m: None), start)


def finish_export(source: TorchSource, output, census: tuple[int, dict[str, int]]) -> ExportResult:
    """The ExportResult of a written artifact: (node count, op counts), size, seconds."""
    path = Path(output)
    return ExportResult(path=path, metadata=source.metadata, num_nodes=census[0], op_counts=census[1],
                        seconds=time.perf_counter() - source.start, size_bytes=path.stat().st_size,
                        input_names=[INPUT_NAME], output_names=output_names(source.metadata.backbone))


def graph_census(graph) -> tuple[int, dict[str, int]]:
    """(node count, {op: count}, most frequent first) of an FX graph's calls."""
    counts: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_function":
            name = str(node.target).removeprefix("aten.")
            counts[name] = counts.get(name, 0) + 1
    return sum(counts.values()), dict(sorted(counts.items(), key=lambda kv: -kv[1]))
