"""ONNX Runtime's CPU route for plugin-flavour files: the fast compiled scan behind the
custom op (the default) against the PyTorch reference route and the float64 reference, on a
graph holding one CrossSelectiveScan node with symbolic batch and size (one session serves
every shape). End to end, the default route is what test_export (TinyViM-S plugin flavour,
dynamic batch, vs the original computation), test_dynamic_size (dynamic H/W) and
test_engines_validate (validate + profile at 64x64) run.

Tolerance, relative to max|y| as in the kernel tests: 1e-5 (float32 rounding in three
different summation orders, measured ~3e-7)."""
import numpy as np
import pytest

from tinyvim.backends.ort import custom_ops
from tinyvim.backends.ort.custom_ops import plugin_session
from tinyvim.errors import TinyvimError
from tinyvim.export.scan_node import scan_node_model
from tinyvim.ops.reference import cross_selective_scan_reference, random_scan_inputs

pytest.importorskip("onnxruntime_extensions", reason="onnxruntime-extensions runs the plugin node on CPU")
REL = 1e-5
D, N = 6, 8


@pytest.fixture(scope="module")
def sessions():
    model = scan_node_model(D, N)
    return plugin_session(model), plugin_session(model, route="reference")


@pytest.mark.parametrize("batch,h,w", [(1, 4, 4), (3, 5, 7), (2, 8, 3)])
def test_fast_route_matches_reference_route_and_float64(sessions, monkeypatch, batch, h, w):
    calls = []
    fast = custom_ops._SCANS["fast"]
    monkeypatch.setitem(custom_ops._SCANS, "fast", lambda *a: calls.append(a[0].shape) or fast(*a))
    inp = random_scan_inputs(batch, D, h, w, N, seed=batch + h)
    feed = {k: v.astype(np.float32) for k, v in inp.items()}
    ref = cross_selective_scan_reference(**inp)
    y_fast = sessions[0].run(None, feed)[0]
    assert calls == [(batch, D, h, w)]           # the fast route ran ...
    y_ref = sessions[1].run(None, feed)[0]
    assert len(calls) == 1                       # ... and the reference route did not call it
    scale = np.abs(ref).max()
    assert np.abs(y_fast - ref).max() <= REL * scale
    assert np.abs(y_fast - y_ref).max() <= REL * scale


def test_route_from_environment(monkeypatch):
    monkeypatch.setenv("TINYVIM_ORT_SCAN", "reference")
    assert custom_ops.scan_route() == "reference" and custom_ops.scan_route("fast") == "fast"
    monkeypatch.setenv("TINYVIM_ORT_SCAN", "slow")
    with pytest.raises(TinyvimError, match="TINYVIM_ORT_SCAN='slow'.*choose fast or reference"):
        plugin_session(scan_node_model(D, N))
