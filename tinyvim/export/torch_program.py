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
import os
import warnings
from typing import Mapping

import torch
from torch import nn

from tinyvim.contract import (
    DEFAULT_OPSET,
    FP32,
    PORTABLE_SCAN,
    ExportMetadata,
    check_variant,
)
from tinyvim.errors import TinyvimError
from tinyvim.export.onnx_export import DYNAMIC_SIZE_EXAMPLE, build_metadata, check_export_args, dynamic_shapes_for
from tinyvim.model import create_model, reparameterize
from tinyvim.ops import scan_implementation

#: the `export --fmt` values traced from the model by torch (the scan inlined)
TORCH_FORMATS = ("pt2", "aoti", "torchscript", "executorch")


def check_torch_format_args(fmt: str, *, scan: str, precision: str, img_size, batch: int, seed: int,
                            dynamic_batch: bool = False, dynamic_size: bool = False,
                            dynamic_ok: bool = False) -> None:
    """The arguments a PyTorch 2 format takes, before anything is built (one-line errors)."""
    check_export_args(scan=scan, precision=precision, img_size=tuple(img_size), batch=batch, opset=None, seed=seed)
    if scan != PORTABLE_SCAN:
        raise TinyvimError(f"--fmt {fmt} inlines the scan as standard ops: drop --scan {scan} (it is for ONNX)")
    if precision != FP32:
        raise TinyvimError(f"--fmt {fmt} is written in fp32 only: drop --precision {precision}")
    if (dynamic_batch or dynamic_size) and not dynamic_ok:
        raise TinyvimError(f"--fmt {fmt} has a fixed input shape: drop --dynamic-batch/--dynamic-size "
                           "(--fmt pt2 and onnx take them)")


def build_deploy(*, variant: str, checkpoint=None, ema: bool = False, backbone: bool = False, seed: int = 0,
                 allow_nonfinite: bool = False, model: nn.Module | None = None) -> nn.Module:
    """The re-parameterized eval model the formats are traced from."""
    if model is None:
        model = create_model(check_variant(variant), checkpoint=checkpoint, backbone=backbone, ema=ema, seed=seed,
                             allow_nonfinite=allow_nonfinite)
    return reparameterize(model).eval()


def example_input(batch: int, img_size, *, dynamic_batch: bool = False, dynamic_size: bool = False) -> torch.Tensor:
    """The traced example: batch >= 2 and H != W when those dims are symbolic (an example of 1,
    or H == W, would pin or merge them)."""
    b = max(batch, 2) if dynamic_batch else batch
    size = DYNAMIC_SIZE_EXAMPLE if dynamic_size else tuple(img_size)
    return torch.randn(b, 3, *size, generator=torch.Generator().manual_seed(0))


def inline_scan(dynamic_size: bool = False):
    """The block within which the model traces its scan as standard ops: the parallel scan's
    index tables are constants of one grid size, the dynamic one derives them from the shape."""
    return scan_implementation("dynamic" if dynamic_size else "parallel", inline=True)


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


def export_program(deploy: nn.Module, example: torch.Tensor, *, dynamic_batch: bool = False,
                   dynamic_size: bool = False) -> torch.export.ExportedProgram:
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


def torch_metadata(*, variant, backbone, ema, checkpoint, seed, img_size, batch, dynamic_batch=False,
                   dynamic_size=False) -> ExportMetadata:
    """The same fields as an ONNX export's metadata_props. `opset` has no meaning for these
    formats and records the ONNX default; scan is portable (inlined standard ops)."""
    return build_metadata(variant=variant, backbone=backbone, ema=ema, checkpoint=checkpoint, seed=seed,
                          img_size=img_size, batch=batch, dynamic_batch=dynamic_batch, scan=PORTABLE_SCAN,
                          opset=DEFAULT_OPSET, precision=FP32, dynamic_size=dynamic_size)


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


def output_list(result) -> list[torch.Tensor]:
    """A model's result as a list of tensors (the classifier returns one, the backbone four)."""
    return list(result) if isinstance(result, (list, tuple)) else [result]


def file_size(path: str | os.PathLike) -> int:
    return os.stat(path).st_size


def prepare_source(fmt: str, *, variant: str = "s", checkpoint=None, ema: bool = False, backbone: bool = False,
                   img_size=(224, 224), batch: int = 1, dynamic_batch: bool = False, dynamic_size: bool = False,
                   scan: str = PORTABLE_SCAN, precision: str = FP32, seed: int = 0, allow_nonfinite: bool = False,
                   model: nn.Module | None = None, dynamic_ok: bool = False, opset=None,
                   ) -> tuple[nn.Module, torch.Tensor, ExportMetadata]:
    """Checked arguments -> (deploy model, traced example, metadata): the prologue of every
    PyTorch 2 format. `opset` is accepted and ignored (the CLI passes it to every format)."""
    variant = check_variant(variant)
    check_torch_format_args(fmt, scan=scan, precision=precision, img_size=img_size, batch=batch, seed=seed,
                            dynamic_batch=dynamic_batch, dynamic_size=dynamic_size, dynamic_ok=dynamic_ok)
    deploy = build_deploy(variant=variant, checkpoint=checkpoint, ema=ema, backbone=backbone, seed=seed,
                          allow_nonfinite=allow_nonfinite, model=model)
    example = example_input(batch, img_size, dynamic_batch=dynamic_batch, dynamic_size=dynamic_size)
    metadata = torch_metadata(variant=variant, backbone=backbone, ema=ema, checkpoint=checkpoint, seed=seed,
                              img_size=tuple(img_size), batch=batch, dynamic_batch=dynamic_batch,
                              dynamic_size=dynamic_size)
    return deploy, example, metadata


def graph_census(graph) -> tuple[int, dict[str, int]]:
    """(node count, {op: count}, most frequent first) of an FX graph's calls."""
    counts: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_function":
            name = str(node.target).removeprefix("aten.")
            counts[name] = counts.get(name, 0) + 1
    return sum(counts.values()), dict(sorted(counts.items(), key=lambda kv: -kv[1]))
