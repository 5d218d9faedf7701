"""The OpenVINO backend: precision resolution against the device's capabilities (also on a
stand-in core, so the bf16 logic is checked whatever CPU runs the tests), validate / profile
through the registry, the plugin flavour refused, OpenVINO IR written and read back."""
from __future__ import annotations

import json

import numpy as np

import pytest
from click.testing import CliRunner

from tinyvim.commands.engines import profile, validate
from tinyvim.backends.ov.loader import compile_config, resolve_precision, supported_precisions
from tinyvim.backends.ov.runner import OvRunner
from tinyvim.backends.registry import get_backend
from tinyvim.errors import TinyvimError

SIZE = 64


class StandInCore:
    """What resolve_precision reads from openvino.Core, for a device of our choosing."""

    def __init__(self, caps, name="Test CPU"):
        self.caps, self.name = caps, name

    def get_property(self, device, key):
        return {"OPTIMIZATION_CAPABILITIES": self.caps, "FULL_DEVICE_NAME": self.name}[key]


def test_precision_is_f32_unless_asked_and_refused_where_the_device_lacks_it():
    avx2 = StandInCore(["FP32", "INT8", "BIN", "EXPORT_IMPORT"], "AMD EPYC (AVX2)")
    amx = StandInCore(["FP32", "BF16", "FP16", "INT8"], "Xeon with AMX")
    assert resolve_precision(avx2, "CPU", None) == "f32"          # never OpenVINO's silent bf16 default
    assert resolve_precision(amx, "CPU", None) == "f32"
    assert resolve_precision(amx, "CPU", "bf16") == "bf16" and resolve_precision(amx, "CPU", "F16") == "f16"
    assert supported_precisions(avx2, "CPU") == ["f32"] and supported_precisions(amx, "CPU") == ["f32", "bf16", "f16"]
    with pytest.raises(TinyvimError, match=r"does not support bf16 \(a CPU needs AVX512-BF16 or AMX.*offers f32; "
                                           r"use --ov-precision f32"):
        resolve_precision(avx2, "CPU", "bf16")
    with pytest.raises(TinyvimError, match="unknown --ov-precision 'int4'"):
        resolve_precision(amx, "CPU", "int4")


def test_flags_map_to_openvino_properties():
    assert compile_config("CPU", "bf16", 2, "throughput") == {
        "INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_NUM_THREADS": 2}
    # threads are a CPU property; the default hint is latency
    assert compile_config("GPU", "f16", 2, None) == {"INFERENCE_PRECISION_HINT": "f16", "PERFORMANCE_HINT": "LATENCY"}
    with pytest.raises(TinyvimError, match="unknown --ov-hint"):
        compile_config("CPU", "f32", None, "fastest")


def test_backend_is_registered_with_its_options():
    ov = get_backend("ov")
    assert set(ov.model_kinds) == {"onnx", "openvino"} and "bf16" in ov.precisions
    assert {o.flag for o in ov.options} == {"--ov-precision", "--ov-device", "--ov-hint", "--ov-shapes"}
    # the registry put its options on the commands: nothing in the CLI names OpenVINO
    help_text = CliRunner().invoke(validate, ["--help"]).output
    assert "--ov-precision" in help_text and "--ov-hint" in help_text


# ------------------------------------------------------------------ with openvino installed
@pytest.fixture(scope="module")
def openvino():
    return pytest.importorskip("openvino", reason="the ov backend needs the openvino extra "
                                                  "(pip install 'tinyvim[openvino]')")


@pytest.fixture(scope="module")
def onnx_s64(tinyvim_onnx, openvino):
    return tinyvim_onnx                     # conftest: TinyViM-S, 64x64, batch 2


def run(command, args):
    return CliRunner().invoke(command, [str(a) for a in args])


def test_validate_f32_matches_pytorch(onnx_s64, tmp_path):
    report = tmp_path / "r.json"
    r = run(validate, [onnx_s64, "--backend", "ov", "--num-inputs", 1, "--threads", 2, "--json", report])
    assert r.exit_code == 0, r.output
    rep = json.loads(report.read_text())
    assert rep["backend"]["name"] == "ov" and rep["tolerance"]["precision"] == "fp32"
    # OpenVINO f32 vs PyTorch: ~5e-7 observed; the acceptance bound is 5e-5
    assert rep["outputs"][0]["max_abs_err"] <= 5e-5 and rep["outputs"][0]["top1"] == 1.0
    assert "computing in f32" in r.output


def test_bf16_passes_the_reduced_tolerance_or_is_refused_in_one_line(onnx_s64, tmp_path, openvino):
    core = openvino.Core()
    report = tmp_path / "r.json"
    r = run(validate, [onnx_s64, "--backend", "ov", "--ov-precision", "bf16", "--num-inputs", 1, "--json", report])
    if "bf16" in supported_precisions(core, "CPU"):
        assert r.exit_code == 0, r.output
        rep = json.loads(report.read_text())
        out = rep["outputs"][0]
        assert rep["tolerance"]["precision"] == "bf16" and out["top1"] == 1.0
        # bf16 keeps 8 mantissa bits: ~2e-3 on these logits; it must differ from f32 at all
        # (else the hint was ignored) and stay far inside the bf16 tolerance
        assert 1e-5 < out["max_abs_err"] < 0.05
    else:
        assert r.exit_code == 2 and "does not support bf16" in r.output and "Traceback" not in r.output


def test_plugin_flavour_without_the_extension_is_one_line(onnx_s64, monkeypatch, tmp_path):
    """Plugin nodes need the tinyvim OpenVINO extension (tests/test_ov_extension.py runs it);
    when it cannot be had, the runner says so in one line."""
    monkeypatch.setenv("TINYVIM_OV_EXTENSION", str(tmp_path / "missing.so"))
    with pytest.raises(TinyvimError, match=r"tinyvim::CrossSelectiveScan nodes, which need the tinyvim OpenVINO "
                                           r"extension .*build-plugin"):
        OvRunner(onnx_s64, plugin_nodes=True).activate()


def test_dynamic_batch_is_compiled_per_input_shape_unless_asked_otherwise(plugin_dyn_onnx, openvino):
    """--ov-shapes static (the default): a dynamic-batch model is compiled for each input shape it
    is fed, once (OpenVINO's CPU kernels for a static graph are faster); dynamic: once for any
    shape. Same numbers either way (validate's fp32 tolerance, 1e-4 abs; measured ~1e-6: the two
    compilations may pick kernels that sum in another order). The plugin-flavour file also checks
    that reshaping keeps the tinyvim op working."""
    rng = np.random.default_rng(3)
    x2 = rng.standard_normal((2, 3, SIZE, SIZE), dtype=np.float32)
    logs: list[str] = []
    with OvRunner(plugin_dyn_onnx, plugin_nodes=True, threads=2, log=logs.append) as static, \
            OvRunner(plugin_dyn_onnx, plugin_nodes=True, threads=2, shapes="dynamic") as dynamic:
        for x in (x2, x2[:1], x2):
            a, b = static.infer({"images": x})["logits"], dynamic.infer({"images": x})["logits"]
            assert a.shape == (len(x), 1000) and np.abs(a - b).max() <= 1e-4
        assert static.compiled_shapes == [((2, 3, SIZE, SIZE),), ((1, 3, SIZE, SIZE),)]
        assert dynamic.compiled_shapes == [None]
        # only the dynamic batch is fixed per call: a size the file was not exported for is refused
        with pytest.raises(TinyvimError, match=r"takes images of shape \[\?,3,64,64\], got 1x3x96x96"):
            static.infer({"images": np.zeros((1, 3, 96, 96), np.float32)})
    assert sum("compiling for input shape" in line for line in logs) == 2


def test_ir_roundtrip_keeps_weights_metadata_and_numbers(onnx_s64, tmp_path):
    from tinyvim.backends.registry import read_model_info
    from tinyvim.export import read_metadata
    from tinyvim.export.openvino_ir import save_ir
    meta = read_metadata(onnx_s64)
    xml, binary = save_ir(onnx_s64, tmp_path / "s.xml", meta)
    info = read_model_info(xml)
    assert info.kind == "openvino" and info.metadata == meta and info.input_shape[1:] == [3, SIZE, SIZE]
    # uncompressed by default: the .bin holds the ~5.6 M fp32 parameters (> 20 MB); with
    # compression OpenVINO stores the large weights in fp16 (observed 15.0 of 22.6 MB)
    _, small = save_ir(onnx_s64, tmp_path / "s16.xml", meta, compress_to_fp16=True)
    assert binary.stat().st_size > 20e6 and small.stat().st_size < 0.8 * binary.stat().st_size
    r = run(validate, [xml, "--num-inputs", 1])        # .xml -> ov by default
    assert r.exit_code == 0 and "PASSED: ov" in r.output, r.output
    with pytest.raises(TinyvimError, match=r"named \*\.xml"):
        save_ir(onnx_s64, tmp_path / "s.ir", meta)


def test_profile_has_ov_rows(onnx_s64, tmp_path, openvino):
    out = tmp_path / "p.json"
    r = run(profile, ["--backend", "ort,ov", "--model", onnx_s64, "--batch", "1,2", "--iters", 2, "--warmup", 1,
                      "--threads", 2, "--json", out])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    rows = [(e["backend"], e["batch"]) for e in doc["results"] if "latency_ms" in e]
    assert rows == [("ort", 2), ("ov", 2)]          # batch 1 skipped: the export's batch is fixed at 2
    assert openvino.__version__.startswith(doc["environment"]["openvino"])
    assert doc["settings"]["options"] == {}
