"""What a model file says about itself: the tinyvim metadata of an ONNX file (or of an engine's
JSON sidecar) and a check that its signature is TinyViM's."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tinyvim.errors import TinyvimError
from tinyvim.utils import parse_size  # noqa: F401  (re-exported for validate/commands)

CLASSIFIER_OUTPUTS = ["logits"]
BACKBONE_OUTPUTS = [f"feat{i}" for i in range(4)]
VARIANTS = ("s", "b", "l")


@dataclass
class ModelInfo:
    """Input/output signature and metadata of an ONNX file or engine.

    input_shape: [batch, 3, H, W] with None for dynamic dimensions."""
    path: str
    kind: str                      # "onnx" | "engine"
    input_name: str
    input_shape: list
    output_names: list[str]
    metadata: dict = field(default_factory=dict)
    plugin_nodes: bool = False

    @property
    def backbone(self) -> bool:
        return self.output_names == BACKBONE_OUTPUTS

    @property
    def fixed_batch(self) -> int | None:
        b = self.input_shape[0]
        return b if isinstance(b, int) and b > 0 else None

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        h, w = self.input_shape[2], self.input_shape[3]
        return (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None


def _dims(value_info) -> list:
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else None)
    return dims


def check_signature(info: ModelInfo) -> None:
    """Raise a one-line error when the model is not a TinyViM export."""
    what = f"{info.path} does not look like a TinyViM model"
    if info.input_name != "images":
        raise TinyvimError(f"{what}: its input is named {info.input_name!r}, TinyViM exports take 'images'")
    if len(info.input_shape) != 4 or info.input_shape[1] not in (3, None):
        raise TinyvimError(f"{what}: input shape {info.input_shape} is not (batch, 3, H, W)")
    if info.output_names not in (CLASSIFIER_OUTPUTS, BACKBONE_OUTPUTS):
        raise TinyvimError(f"{what}: outputs {info.output_names} are neither ['logits'] nor feat0..feat3")
    if info.fixed_size and (info.fixed_size[0] % 32 or info.fixed_size[1] % 32):
        raise TinyvimError(f"{what}: input size {info.fixed_size[0]}x{info.fixed_size[1]} "
                           "is not a multiple of 32")


def read_onnx_info(path: str | os.PathLike) -> ModelInfo:
    """Signature + metadata of an ONNX file, with one-line errors for missing / non-ONNX files."""
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if not p.is_file():
        raise TinyvimError(f"{p}: no such file")
    try:
        # Weights are not needed here; external data (large models) is not read.
        proto = onnx.load(os.fspath(p), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise TinyvimError(f"{p} is not an ONNX model ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    if not proto.graph.node and not proto.graph.input:
        raise TinyvimError(f"{p} is not an ONNX model (empty graph)")
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise TinyvimError(f"{p} does not look like a TinyViM model: it has {len(inputs)} inputs "
                           f"({', '.join(i.name for i in inputs)}), TinyViM exports have one, 'images'")
    from tinyvim.engines.ort_runner import has_plugin_nodes
    info = ModelInfo(path=os.fspath(p), kind="onnx", input_name=inputs[0].name,
                     input_shape=_dims(inputs[0]), output_names=[o.name for o in proto.graph.output],
                     metadata={m.key: m.value for m in proto.metadata_props},
                     plugin_nodes=has_plugin_nodes(proto.graph))
    check_signature(info)
    return info


def read_engine_info(path: str | os.PathLike) -> ModelInfo:
    """Signature + metadata of a TensorRT engine, from its JSON sidecar (no TensorRT needed)."""
    from tinyvim.engines.trt_common import read_sidecar

    p = Path(path)
    if not p.is_file():
        raise TinyvimError(f"{p}: no such file")
    sidecar = read_sidecar(p)
    meta = dict(sidecar.get("onnx_metadata", {}))
    backbone = meta.get("backbone") == "true"
    profile = (sidecar.get("profiles") or [{}])[0].get("images", {})
    h, w = parse_size(meta["input_size"]) if meta.get("input_size") else (None, None)
    fixed = profile.get("min") == profile.get("max") and profile.get("min")
    info = ModelInfo(path=os.fspath(p), kind="engine", input_name="images",
                     input_shape=[profile["min"][0] if fixed else None, 3, h, w],
                     output_names=BACKBONE_OUTPUTS if backbone else CLASSIFIER_OUTPUTS,
                     metadata={**meta, "precision": sidecar.get("precision", meta.get("precision", "fp32"))})
    info.metadata["max_batch"] = str(profile["max"][0]) if profile.get("max") else ""
    info.metadata["min_batch"] = str(profile["min"][0]) if profile.get("min") else ""
    return info


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """Dispatch on the extension: .engine/.plan/.trt -> engine sidecar, else ONNX."""
    if Path(path).suffix.lower() in (".engine", ".plan", ".trt"):
        return read_engine_info(path)
    return read_onnx_info(path)
