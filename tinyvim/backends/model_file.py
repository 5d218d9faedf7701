"""What a model file says about itself (`ModelInfo`): its input/output signature and its tinyvim
metadata, validated through `tinyvim.contract.ExportMetadata` before anything trusts it.

ONNX, the file every backend starts from, is read here; each backend with a file kind of its
own reads it in its package (backends/trt/model_file.py: engine + sidecar; backends/ov/
model_file.py: IR), and `tinyvim.backends.registry.read_model_info` picks the reader by suffix."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tinyvim.contract import (
    BACKBONE_OUTPUTS,
    CLASSIFIER_OUTPUTS,
    FP32,
    INPUT_MULTIPLE,
    INPUT_NAME,
    MAX_BATCH,
    MAX_IMAGE_SIDE,
    PLUGIN_SCAN,
    PORTABLE_SCAN,
    SCAN_PLUGIN,
    ExportMetadata,
    ScanFlavour,
    check_workload,
    format_size,
)
from tinyvim.errors import TinyvimError
from tinyvim.lazy import lazy_import

onnx = lazy_import("onnx")
protobuf = lazy_import("google.protobuf.message")

#: protobuf cannot hold a single-file ONNX above 2 GiB; a larger file is not read into memory
MAX_ONNX_BYTES = 2**31


@dataclass
class ModelInfo:
    """Input/output signature and metadata of an ONNX file or engine.

    input_shape: [batch, 3, H, W] with None for dynamic dimensions.
    metadata: the export's tinyvim metadata (None for a foreign ONNX without it).
    precision: what the model computes in (the export's precision; an engine's build precision).
    batch_range: (min, max) batch the model accepts (an engine's profile), None when unbounded
    by the file itself."""
    path: str
    kind: str                      # "onnx" | "engine" | "openvino" (IR)
    input_name: str
    input_shape: list
    output_names: list[str]
    metadata: ExportMetadata | None = None
    precision: str = FP32
    plugin_nodes: bool = False
    batch_range: tuple[int, int] | None = None

    @property
    def backbone(self) -> bool:
        return tuple(self.output_names) == BACKBONE_OUTPUTS

    @property
    def scan(self) -> ScanFlavour:
        """The scan flavour, as the file shows it: an ONNX's own nodes (read once, here), else
        what the metadata records (an engine, whose graph is compiled)."""
        if self.plugin_nodes:
            return PLUGIN_SCAN
        return self.metadata.scan if self.kind == "engine" and self.metadata is not None else PORTABLE_SCAN

    @property
    def fixed_batch(self) -> int | None:
        b = self.input_shape[0]
        return b if isinstance(b, int) and b > 0 else None

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        h, w = self.input_shape[2], self.input_shape[3]
        return (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None

    def batch_problem(self, batch: int) -> str | None:
        """Why this model cannot run `batch` images at once (None when it can)."""
        if self.fixed_batch and batch != self.fixed_batch:
            return f"model has a fixed batch of {self.fixed_batch}"
        if self.batch_range and not self.batch_range[0] <= batch <= self.batch_range[1]:
            return f"engine's profile takes batch {self.batch_range[0]}..{self.batch_range[1]}"
        return None


def has_plugin_nodes(graph) -> bool:
    """True when an onnx GraphProto contains the custom scan node (plugin flavour)."""
    return any(n.op_type == SCAN_PLUGIN.op_type or n.domain == SCAN_PLUGIN.onnx_domain for n in graph.node)


def _dims(value_info) -> list:
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else None)
    return dims


def check_signature(info: ModelInfo) -> None:
    """Raise a one-line error when the model is not a TinyViM export."""
    what = f"{info.path} does not look like a TinyViM model"
    if info.input_name != INPUT_NAME:
        raise TinyvimError(f"{what}: its input is named {info.input_name!r}, TinyViM exports take {INPUT_NAME!r}")
    if len(info.input_shape) != 4 or info.input_shape[1] not in (3, None):
        raise TinyvimError(f"{what}: input shape {info.input_shape} is not (batch, 3, H, W)")
    if tuple(info.output_names) not in (CLASSIFIER_OUTPUTS, BACKBONE_OUTPUTS):
        raise TinyvimError(f"{what}: outputs {info.output_names} are neither ['logits'] nor feat0..feat3")
    if info.fixed_size and (info.fixed_size[0] % INPUT_MULTIPLE or info.fixed_size[1] % INPUT_MULTIPLE):
        raise TinyvimError(f"{what}: input size {info.fixed_size[0]}x{info.fixed_size[1]} "
                           f"is not a multiple of {INPUT_MULTIPLE}")
    if info.fixed_size and max(info.fixed_size) > MAX_IMAGE_SIDE:
        raise TinyvimError(f"{info.path}: input size {format_size(info.fixed_size)} is larger than "
                           f"{MAX_IMAGE_SIDE} on a side: not a model tinyvim runs")
    if info.fixed_batch and info.fixed_batch > MAX_BATCH:
        raise TinyvimError(f"{info.path}: fixed batch {info.fixed_batch} is above {MAX_BATCH}: not a model tinyvim runs")
    if info.fixed_batch and info.fixed_size:
        check_workload(info.fixed_batch, info.fixed_size, what=f"{info.path}: fixed batch")
    meta = info.metadata
    if meta is not None:
        if meta.backbone != info.backbone:
            raise TinyvimError(f"{what}: its metadata says backbone={str(meta.backbone).lower()} but its outputs "
                               f"are {', '.join(info.output_names)}")
        if meta.input_size and info.fixed_size and meta.input_size != info.fixed_size:
            raise TinyvimError(f"{what}: its metadata says {meta.input_size[0]}x{meta.input_size[1]} but its "
                               f"input is {info.fixed_size[0]}x{info.fixed_size[1]}")


def load_onnx_proto(path: Path) -> onnx.ModelProto:
    """The ModelProto in `path`, parsed as binary protobuf whatever its suffix: onnx.load picks a
    JSON or text parser for .json / .textproto names, whose ParseErrors nothing expects (an
    export's .json sidecar passed back as the model gave a 69-line traceback). Weights are not
    needed by the callers; external data is not read."""
    try:
        return onnx.load(os.fspath(path), format="protobuf", load_external_data=False)
    except (protobuf.DecodeError, ValueError, RuntimeError, OSError) as exc:
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
        if head[:1] in (b"{", b"[") or (head and all(32 <= c < 127 or c in b"\t\r\n" for c in head)):
            raise TinyvimError(f"{path} is not an ONNX model: it is a text file (JSON or text); pass the binary "
                               ".onnx file (an export's .json is its report)") from None
        raise TinyvimError(f"{path} is not an ONNX model ({type(exc).__name__}: {exc})".splitlines()[0]) from None


def read_onnx_info(path: str | os.PathLike) -> ModelInfo:
    """Signature + metadata of an ONNX file, with one-line errors for missing / non-ONNX files."""
    p = Path(path)
    if not p.is_file():
        raise TinyvimError(f"{p}: no such file" if not p.exists() else f"{p}: not a regular file")
    if p.stat().st_size > MAX_ONNX_BYTES:
        raise TinyvimError(f"{p} is larger than 2 GiB: not a single-file ONNX model (protobuf's limit)")
    proto = load_onnx_proto(p)
    if not proto.graph.node and not proto.graph.input:
        raise TinyvimError(f"{p} is not an ONNX model (empty graph)")
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise TinyvimError(f"{p} does not look like a TinyViM model: it has {len(inputs)} inputs "
                           f"({', '.join(i.name for i in inputs)}), TinyViM exports have one, {INPUT_NAME!r}")
    meta = ExportMetadata.from_props({m.key: m.value for m in proto.metadata_props}, source=os.fspath(p))
    info = ModelInfo(path=os.fspath(p), kind="onnx", input_name=inputs[0].name,
                     input_shape=_dims(inputs[0]), output_names=[o.name for o in proto.graph.output],
                     metadata=meta, precision=meta.precision if meta else FP32,
                     plugin_nodes=has_plugin_nodes(proto.graph))
    check_signature(info)
    return info


def info_from_metadata(path: str | os.PathLike, kind: str, meta: ExportMetadata | None) -> ModelInfo:
    """ModelInfo of an artifact whose signature is not read from a graph (a .pt2, .torchscript,
    .pte): the input shape and outputs the tinyvim metadata recorded at export. An artifact
    without that metadata is refused: nothing else says what it takes."""
    if meta is None:
        raise TinyvimError(f"{path} carries no tinyvim metadata: it was not written by `tinyvim export` "
                           f"(re-export it with `tinyvim export --fmt {kind}`)")
    size = meta.input_size or (None, None)
    info = ModelInfo(path=os.fspath(path), kind=kind, input_name=INPUT_NAME, input_shape=[meta.batch, 3, *size],
                     output_names=list(BACKBONE_OUTPUTS if meta.backbone else CLASSIFIER_OUTPUTS), metadata=meta,
                     precision=meta.precision)
    check_signature(info)
    return info
