"""Edits of an exported ONNX graph with onnx-graphsurgeon, keeping what makes it a tinyvim export.

graphsurgeon round-trips a graph losslessly but builds a new ModelProto: the model-level
fields (metadata_props - the typed ExportMetadata -, producer, doc string, model version) are
copied back here, so an edited model still reads as the export it came from."""
from __future__ import annotations

from typing import TYPE_CHECKING
from collections.abc import Callable


from tinyvim.lazy import import_optional, lazy_import

onnx = lazy_import("onnx")

if TYPE_CHECKING:   # optional dependency, imported where used
    import onnx_graphsurgeon


def edit_graph(model: onnx.ModelProto, edit: Callable[[onnx_graphsurgeon.Graph], None]) -> onnx.ModelProto:
    """A new model: `model`'s graph imported into graphsurgeon, changed in place by `edit`,
    exported again, with `model`'s metadata."""
    gs = import_optional("onnx_graphsurgeon")
    graph = gs.import_onnx(model)
    edit(graph)
    out = gs.export_onnx(graph)
    out.metadata_props.extend(model.metadata_props)
    out.producer_name, out.producer_version = model.producer_name, model.producer_version
    out.doc_string, out.model_version = model.doc_string, model.model_version
    return out
