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
from tinyvim.contract import SCAN_PLUGIN
from tinyvim.errors import TinyvimError
from tinyvim.export.scan_node import scan_node_model
from tinyvim.ops.reference import cross_selective_scan_reference, random_scan_inputs
from tinyvim.plugins.cpu_fast import cross_selective_scan_fast

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


def _feed(batch, h, w, seed):
    inp = random_scan_inputs(batch, D, h, w, N, seed=seed)
    return inp, {k: v.astype(np.float32) for k, v in inp.items()}


def test_result_goes_back_as_an_array_and_is_the_same(sessions, monkeypatch):
    """Our invoker hands the result back as the flat float32 array (the extension's stock
    invoker makes a Python list of it, the route's main cost); ORT's output must hold exactly
    the kernel's result either way, on odd sizes (h != w, both odd, batch 3)."""
    assert custom_ops.array_results()
    stock_calls = []
    stock = custom_ops._stock_invoker
    monkeypatch.setattr(custom_ops, "_stock_invoker", lambda *a: stock_calls.append(a[0]) or stock(*a))
    inp, feed = _feed(3, 5, 7, seed=21)
    want = cross_selective_scan_fast(**feed)
    y = sessions[0].run(None, feed)[0]
    assert stock_calls == []                       # our op never went through the list path
    assert y.dtype == np.float32 and y.shape == (3, D, 5, 7) and np.array_equal(y, want)
    assert custom_ops.use_array_results(False) is False
    try:
        y_list = sessions[0].run(None, feed)[0]    # the stock invoker's list, cast back by C++
    finally:
        assert custom_ops.use_array_results(True)
    assert np.array_equal(y_list, want)
    ref = cross_selective_scan_reference(**inp)
    assert np.abs(y - ref).max() <= REL * np.abs(ref).max()


def test_invoker_answers_our_ops_and_hands_the_rest_to_the_stock_one(sessions, monkeypatch):
    """The invoker is process-wide: a Python op that is not ours must still get the extension's
    own handling. (Called directly: registering another Python op while sessions exist is unsafe
    in onnxruntime-extensions, whose op table may move in memory.)"""
    stock_calls = []
    monkeypatch.setattr(custom_ops, "_stock_invoker", lambda *a: stock_calls.append(a) or ("stock",))
    assert custom_ops._invoke(-1, ["feed"], {"attr": "1"}) == ("stock",)
    assert stock_calls == [(-1, ["feed"], {"attr": "1"})]
    (op_id, opdef), = [(i, o) for i, o in custom_ops._own_ops.items() if o.op_type == SCAN_PLUGIN.op_type]
    _, feed = _feed(2, 3, 5, seed=8)
    attrs = {k: str(v) for k, v in SCAN_PLUGIN.node_attributes(d_state=N).items()}    # as C++ hands them: text
    rid, shape, data = custom_ops._invoke(op_id, [feed[k] for k in SCAN_PLUGIN.input_names], attrs)
    assert len(stock_calls) == 1 and rid == op_id and shape == (2, D, 3, 5)
    assert isinstance(data, np.ndarray) and data.dtype == np.float32 and data.flags.c_contiguous
    assert np.array_equal(data, cross_selective_scan_fast(**feed).reshape(-1))


def test_node_shape_check_is_cached_but_fails_every_time():
    """The contract's check runs once per distinct call shape, but a failing call is not
    cached: d_state (the node says N) against Bs/Cs with N + 1 states fails twice. (Through a
    session such an error aborts the process inside onnxruntime-extensions, so it is called
    directly.)"""
    good = ((1, D, 4, 4), (1, 4 * D, 4, 4), (1, 4, N, 4, 4), (1, 4, N, 4, 4), (4 * D, N), (4 * D,), (4 * D,))
    bad = good[:2] + ((1, 4, N + 1, 4, 4),) * 2 + ((4 * D, N + 1),) + good[5:]
    custom_ops._check_node.cache_clear()
    custom_ops._check_node(good, (("d_state", N),))
    custom_ops._check_node(good, (("d_state", N),))
    assert custom_ops._check_node.cache_info().hits == 1
    for _ in range(2):
        with pytest.raises(ValueError, match="CrossSelectiveScan: Bs must be"):
            custom_ops._check_node(bad, (("d_state", N),))
