"""The tinyvim OpenVINO extension: the CrossSelectiveScan op (our fast CPU scan) and its ONNX
conversion, built against the openvino wheel's headers into the plugin cache on first use.

Tolerances: the op alone, 1e-5 of max|y| against the float64 reference (as the kernel tests);
TinyViM-S end to end, validate's own fp32 tolerance (1e-4 abs) against the original computation."""
import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from tinyvim.backends.ov.loader import ir_has_plugin_nodes, new_core, supported_precisions
from tinyvim.commands.engines import validate
from tinyvim.contract import IR_EXTENSION_LIBRARY, IR_EXTENSION_RT_INFO_KEY
from tinyvim.errors import TinyvimError
from tinyvim.export import read_metadata
from tinyvim.export.openvino_ir import save_ir
from tinyvim.export.scan_node import scan_node_model
from tinyvim.plugins.ov_extension import extension_library
from tinyvim.ops.reference import cross_selective_scan_reference, random_scan_inputs

ov = pytest.importorskip("openvino", reason="the OpenVINO extension needs the openvino extra")
REL = 1e-5
D, N = 6, 8


@pytest.fixture(scope="module")
def scan_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("ovext") / "scan.onnx"
    onnx.save(scan_node_model(D, N), path)
    return path


@pytest.mark.parametrize("hint", ["f32", "bf16"])
def test_op_matches_reference_at_any_batch_and_size_in_fp32(scan_model, hint):
    core = new_core(ov, scan_model, plugin_nodes=True)
    if hint not in supported_precisions(core, "CPU"):
        pytest.skip(f"this CPU has no {hint}")
    compiled = core.compile_model(core.read_model(str(scan_model)), "CPU", {"INFERENCE_PRECISION_HINT": hint})
    # the scan keeps computing in fp32 whatever the hint (the contract), visible in the runtime graph
    scans = [op for op in compiled.get_runtime_model().get_ops()
             if op.get_rt_info()["layerType"].astype(str) == "Reference"]
    assert scans and all(op.get_rt_info()["runtimePrecision"].astype(str) == "f32" for op in scans)
    for batch, h, w in [(1, 4, 4), (3, 5, 7)]:
        inp = random_scan_inputs(batch, D, h, w, N, seed=h)
        ref = cross_selective_scan_reference(**inp)
        y = compiled({k: v.astype(np.float32) for k, v in inp.items()})[0]
        assert y.shape == ref.shape and np.abs(y - ref).max() <= REL * np.abs(ref).max()


def test_op_runs_on_openvinos_workers_and_equals_the_threaded_build(scan_model):
    """The extension's scan runs its tasks on the CPU plugin's TBB workers (its own threads would
    compete with OpenVINO's spinning idle ones for the cores): the build says so, and the op's
    result is bit-identical to the threaded library's (same code, every (batch, direction) in its
    own buffer, directions summed in a fixed order), here on 3 x 4 tasks over 2 workers."""
    import ctypes
    from tinyvim.plugins import cpu_fast
    assert cpu_fast.threading(ctypes.CDLL(str(extension_library()))) == "tbb"
    assert cpu_fast.threading() == "threads"
    core = new_core(ov, scan_model, plugin_nodes=True)
    compiled = core.compile_model(core.read_model(str(scan_model)), "CPU", {"INFERENCE_NUM_THREADS": 2})
    inp = {k: v.astype(np.float32) for k, v in random_scan_inputs(3, D, 6, 5, N, seed=11).items()}
    y = compiled(inp)[0]
    assert np.array_equal(y, cpu_fast.cross_selective_scan_fast(**inp, threads=1))
    ref = cross_selective_scan_reference(**inp)
    assert np.abs(y - ref).max() <= REL * np.abs(ref).max()


def test_missing_extension_is_one_line(scan_model, monkeypatch):
    monkeypatch.setenv("TINYVIM_OV_EXTENSION", "/nonexistent/libx.so")
    with pytest.raises(TinyvimError, match=r"need the tinyvim OpenVINO extension .*build-plugin") as info:
        new_core(ov, scan_model, plugin_nodes=True)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_plugin_flavour_onnx_and_ir_validate_on_ov(tmp_path, monkeypatch, plugin_dyn_onnx):
    """TinyViM-S 64x64, plugin flavour, dynamic batch (tests/conftest.py): the ONNX and an IR
    converted from it validate on OpenVINO against the original computation; the IR names its
    extension, and without it validate says so in one line."""
    onnx_path = plugin_dyn_onnx
    r = CliRunner().invoke(validate, [str(onnx_path), "--backend", "ov", "--batch", "2", "--num-inputs", "1"])
    assert r.exit_code == 0 and "PASSED" in r.output, r.output
    xml, _ = save_ir(onnx_path, tmp_path / "s.xml", read_metadata(str(onnx_path)), extension=extension_library())
    assert ir_has_plugin_nodes(xml)
    model = new_core(ov, xml, plugin_nodes=True).read_model(str(xml))
    assert model.get_rt_info()[IR_EXTENSION_RT_INFO_KEY]["library"].astype(str) == IR_EXTENSION_LIBRARY
    r = CliRunner().invoke(validate, [str(xml), "--num-inputs", "1"])
    assert r.exit_code == 0 and "PASSED" in r.output, r.output
    r = CliRunner().invoke(validate, [str(xml), "--num-inputs", "1"], env={"TINYVIM_OV_EXTENSION": os.devnull + "x"})
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert r.exit_code == 2 and len(lines) == 1 and "OpenVINO extension" in lines[0], r.output
