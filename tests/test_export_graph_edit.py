"""Graph edits with onnx-graphsurgeon keep the export's metadata: the plugin nodes' move to
ai.onnx.contrib for the CPU custom-op path (tinyvim.backends.ort.custom_ops)."""
from __future__ import annotations

import onnx
import pytest

from scan_models import scan_onnx
from tinyvim.contract import SCAN_PLUGIN
from tinyvim.export.onnx_export import read_metadata
from tinyvim.backends.ort.custom_ops import CONTRIB_DOMAIN, to_contrib_domain

pytest.importorskip("onnx_graphsurgeon", reason="onnx-graphsurgeon is not installed")


def test_contrib_domain_rewrite_keeps_metadata_and_everything_else(tmp_path):
    model = onnx.load(str(scan_onnx(tmp_path / "m.onnx")))
    model.producer_name, model.doc_string = "tinyvim", "a doc string"
    before = onnx.ModelProto()
    before.CopyFrom(model)
    out = to_contrib_domain(model)
    assert model == before                                            # the input is left alone
    assert [(p.key, p.value) for p in out.metadata_props] == [(p.key, p.value) for p in model.metadata_props]
    assert read_metadata(out) == read_metadata(model) and read_metadata(out).scan == "plugin"
    assert (out.producer_name, out.doc_string) == ("tinyvim", "a doc string")
    assert {o.domain: o.version for o in out.opset_import} == {"": 20, CONTRIB_DOMAIN: 1}
    moved = [n for n in out.graph.node if n.op_type == SCAN_PLUGIN.op_type]
    assert [n.domain for n in moved] == [CONTRIB_DOMAIN]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in moved[0].attribute} == {
        "plugin_version": b"1", "plugin_namespace": b"tinyvim", "d_state": 8}
    strip = lambda m: [(n.op_type, list(n.input), list(n.output)) for n in m.graph.node]   # noqa: E731
    assert strip(out) == strip(model)
    assert [n.domain for n in out.graph.node if n.op_type != SCAN_PLUGIN.op_type] == ["", "", ""]
