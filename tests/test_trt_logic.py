"""TensorRT build/run logic that needs no TensorRT (always runs), plus the checks that need it
(skipped, with the reason, where tensorrt is absent)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tinyvim.utils import file_sha256
from tinyvim.backends.trt import sidecar as sc
from tinyvim.contract import ExportMetadata
from tinyvim.backends.trt import builder as tb
from tinyvim.backends.trt import common as tc
from tinyvim.errors import TinyvimError

try:
    import tensorrt  # noqa: F401
    HAVE_TRT = True
except ImportError:
    HAVE_TRT = False
needs_trt = pytest.mark.skipif(not HAVE_TRT, reason="tensorrt is not installed (NVIDIA index / GPU machine only)")


def test_version_parsing_and_comparison():
    assert tc.version_tuple("10.3.0.26") == (10, 3, 0, 26)
    assert tc.version_tuple("10.0.0b6") == (10, 0, 0)
    assert tc.version_at_least("10", "10.0.0") and tc.version_at_least("10.10.0", "10.9")
    assert not tc.version_at_least("9.3.0", "10")
    assert tc.same_build_version("10.3.0.26", "10.3.0.30")
    assert not tc.same_build_version("10.3.0", "10.4.0")
    with pytest.raises(ValueError):
        tc.version_tuple("abc")
    with pytest.raises(TinyvimError, match="too old"):
        tc.check_trt_version("8.6.1")


def test_profile_shapes_from_batches_for_a_fixed_size():
    p = tb.profile_shapes([None, 3, 224, 224], tb.ProfileRequest(min_batch=1, opt_batch=8, max_batch=32))["images"]
    assert p == {"min": [1, 3, 224, 224], "opt": [8, 3, 224, 224], "max": [32, 3, 224, 224]}
    # opt defaults to max, max to opt (or min), min to 1
    assert tb.profile_shapes([None, 3, 224, 192], tb.ProfileRequest(max_batch=16))["images"] == {
        "min": [1, 3, 224, 192], "opt": [16, 3, 224, 192], "max": [16, 3, 224, 192]}
    assert tb.profile_shapes([None, 3, 224, 224], tb.ProfileRequest(min_batch=4))["images"]["max"] == [4, 3, 224, 224]
    with pytest.raises(TinyvimError, match=r"min \(8x224x224\) <= opt \(4x224x224\)"):
        tb.profile_shapes([None, 3, 224, 224], tb.ProfileRequest(min_batch=8, opt_batch=4, max_batch=16))
    # a fixed-batch ONNX only builds for its batch
    assert tb.profile_shapes([1, 3, 224, 224])["images"]["max"] == [1, 3, 224, 224]
    with pytest.raises(TinyvimError, match="dynamic-batch"):
        tb.profile_shapes([1, 3, 224, 224], tb.ProfileRequest(max_batch=8))
    with pytest.raises(TinyvimError, match="--max-batch must be an integer from 1 to 4096"):
        tb.profile_shapes([None, 3, 224, 224], tb.ProfileRequest(max_batch=5000))


def test_profile_shapes_with_height_and_width():
    dynamic = [None, 3, None, None]
    p = tb.profile_shapes(dynamic, tb.ProfileRequest(min_shape="1x128x128", opt_shape="4x224x224", max_shape="16x384x320"))["images"]
    assert p == {"min": [1, 3, 128, 128], "opt": [4, 3, 224, 224], "max": [16, 3, 384, 320]}
    # one shape: a fixed profile; the missing ends follow the same rules as batches
    assert tb.profile_shapes(dynamic, tb.ProfileRequest(opt_shape="2x256x256"))["images"]["min"] == [2, 3, 256, 256]
    assert tb.profile_shapes(dynamic, tb.ProfileRequest(min_shape="1x64x64", max_shape="8x96x96"))["images"]["opt"] == [8, 3, 96, 96]
    with pytest.raises(TinyvimError, match="dynamic image size: give the range with --min-shape"):
        tb.profile_shapes(dynamic, tb.ProfileRequest(max_batch=8))
    with pytest.raises(TinyvimError, match="not both"):
        tb.profile_shapes(dynamic, tb.ProfileRequest(max_shape="8x224x224", min_batch=2))
    with pytest.raises(TinyvimError, match="in batch, height and width"):
        tb.profile_shapes(dynamic, tb.ProfileRequest(min_shape="1x256x224", max_shape="8x224x224"))
    with pytest.raises(TinyvimError, match="not divisible by 32"):
        tb.profile_shapes(dynamic, tb.ProfileRequest(max_shape="8x230x224"))
    with pytest.raises(TinyvimError, match="is not BxHxW"):
        tb.profile_shapes(dynamic, tb.ProfileRequest(max_shape="224x224"))
    # a fixed size admits only itself; a dynamic batch with a fixed size takes shapes too
    with pytest.raises(TinyvimError, match="fixed image size of 224x224"):
        tb.profile_shapes([None, 3, 224, 224], tb.ProfileRequest(max_shape="8x256x256"))
    assert tb.profile_shapes([None, 3, 224, 224], tb.ProfileRequest(max_shape="8x224x224"))["images"]["max"] == [8, 3, 224, 224]


def test_precision_policy_by_trt_version():
    fp32 = tb.precision_policy("fp32", "10.3.0")
    assert not fp32.strongly_typed and not fp32.tf32 and not fp32.pin_fp32
    assert fp32.config_kwargs() == {"tf32": False, "fp16": False, "bf16": False, "int8": False, "fp8": False,
                                    "precision_constraints": None}
    assert tb.precision_policy("fp32", "10.3.0", tf32=True).config_kwargs()["tf32"]
    fp16 = tb.precision_policy("fp16", "10.3.0")
    assert fp16.config_kwargs() == {"tf32": False, "fp16": True, "bf16": False, "int8": False, "fp8": False,
                                    "precision_constraints": "obey"}
    assert fp16.pin_fp32 and not fp16.strongly_typed
    assert tb.precision_policy("bf16", "10.8").config_kwargs()["bf16"]
    # TensorRT 11: strongly typed; reduced precision must come from the ONNX
    with pytest.raises(TinyvimError, match="export .*--precision fp16"):
        tb.precision_policy("fp16", "11.0.0", onnx_precision="fp32")
    p = tb.precision_policy("fp16", "11.2.0", onnx_precision="fp16")
    assert p.strongly_typed and not p.fp16 and not p.pin_fp32 and p.config_kwargs()["precision_constraints"] is None
    assert tb.precision_policy("fp32", "11.0", onnx_precision="fp32").strongly_typed
    # an fp16 ONNX is strongly typed on 10.x as well
    assert tb.precision_policy("fp16", "10.3", onnx_precision="fp16").strongly_typed
    with pytest.raises(TinyvimError, match="too old"):
        tb.precision_policy("fp16", "8.6.1")
    with pytest.raises(TinyvimError, match="unknown precision"):
        tb.precision_policy("int4", "10.3")


def test_equivalent_commands_for_a_fixed_shape_portable_build():
    policy = tb.precision_policy("fp32", "10.16.0")
    cmds = tb.equivalent_commands("m.onnx", "m.engine", policy=policy, profile=tb.profile_shapes([1, 3, 224, 224]),
                                  static_input=True, plugin=None, pinned=[], trt_version="10.16.0")
    assert cmds["trtexec"] == "trtexec --onnx=m.onnx --saveEngine=m.engine --skipInference --noTF32"
    assert cmds["polygraphy"] == "polygraphy convert m.onnx --convert-to trt -o m.engine"


@pytest.mark.parametrize("name,kind,act,pinned", [
    ("/network.4/op/CrossSelectiveScan", "PLUGIN_V3", None, True),
    ("scan_plugin", "PLUGIN_V2", None, True),
    ("/out_norm/LayerNormalization", "NORMALIZATION", None, True),
    ("act", "ACTIVATION", "SOFTPLUS", True),
    ("/network.2/op/softplus_stable/Relu", "ACTIVATION", "RELU", True),   # part of the stable softplus
    ("/network.0/mlp/fc1/Conv", "CONVOLUTION", None, False),
    ("gelu", "ACTIVATION", "GELU_ERF", False),
])
def test_layers_pinned_to_fp32(name, kind, act, pinned):
    assert tb.should_pin_fp32(name, kind, act) is pinned


def test_layers_pinned_by_onnx_op_type():
    from onnx import helper
    graph = helper.make_graph([helper.make_node("Exp", ["a"], ["b"], name="node_exp"),
                               helper.make_node("Conv", ["b", "w"], ["c"], name="node_Conv_1"),
                               helper.make_node("ReduceMean", ["c"], ["d"], name="n3"),
                               helper.make_node("Log", ["d"], ["e"], name="n4")], "g", [], [])
    nodes = tb.fp32_node_names(graph)
    assert nodes == {"node_exp", "n3", "n4"}
    assert tb.should_pin_fp32("node_exp", "UNARY", fp32_nodes=nodes)
    assert tb.should_pin_fp32("layer_17", "REDUCE", layer_metadata="[ONNX Layer: n3]", fp32_nodes=nodes)
    assert not tb.should_pin_fp32("node_Conv_1", "CONVOLUTION", layer_metadata="[ONNX Layer: node_Conv_1]",
                                  fp32_nodes=nodes)


def test_sidecar_roundtrip_and_mismatch_messages(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine")
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"onnx")
    gpu = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    side = sc.make_sidecar(tinyvim_version="0.1.0", trt_version="10.3.0.26", gpu=gpu, precision="fp16",
                           profiles=[tb.profile_shapes([None, 3, 224, 224], tb.ProfileRequest(max_batch=32))], onnx_path=str(onnx_file),
                           onnx_sha256=file_sha256(onnx_file), onnx_metadata={"variant": "s"},
                           build_seconds=12.3456, strongly_typed=False, plugin=None)
    import hashlib
    assert side["onnx"]["sha256"] == hashlib.sha256(b"onnx").hexdigest()
    sc.sidecar_path(engine).write_text(json.dumps(side))
    assert sc.read_sidecar(engine).to_dict() == side
    assert sc.check_sidecar(side, trt_version="10.3.0.30", gpu=gpu) == ([], [])
    errors, _ = sc.check_sidecar(side, trt_version="10.5.0", gpu=gpu)
    assert len(errors) == 1 and "built with TensorRT 10.3.0.26" in errors[0]
    errors, _ = sc.check_sidecar(side, trt_version="10.3.0", gpu={"name": "NVIDIA A100", "compute_capability": "8.0"})
    assert len(errors) == 1 and "compute capability 9.0" in errors[0] and "rebuild" in errors[0]
    errors, warnings = sc.check_sidecar(side, trt_version="10.3.0",
                                        gpu={"name": "NVIDIA H100 PCIe", "compute_capability": "9.0"})
    assert errors == [] and "same compute capability" in warnings[0]
    assert sc.check_sidecar({}, trt_version="10.3", gpu=gpu)[0]


def test_missing_sidecar_is_a_clear_error(tmp_path):
    with pytest.raises(TinyvimError, match="sidecar"):
        sc.read_sidecar(tmp_path / "none.engine")


def test_parser_errors_explain_the_plugin():
    msg = tb.explain_parser_errors(["ModelImporter.cpp:771: ... Plugin not found, are the plugin name, "
                                    "version, and namespace correct?"])
    assert "--plugin" in msg and "Plugin not found" in msg and "tinyvim build-plugin" in msg
    assert "--plugin" in tb.explain_parser_errors(["node_scan_1: Could not create the plugin."])
    assert "--plugin" not in tb.explain_parser_errors(["Unsupported ONNX data type: UINT8"])


def test_write_atomically_replaces_and_cleans_up(tmp_path):
    from tinyvim.utils import atomic_write_bytes
    target = tmp_path / "sub" / "x.engine"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["x.engine"]


def test_default_engine_path():
    assert str(tb.default_engine_path("/a/m.onnx", "fp16")) == "/a/m.fp16.engine"


@pytest.mark.skipif(HAVE_TRT, reason="tensorrt is installed: the missing-TensorRT path cannot be checked")
def test_build_engine_cli_without_tensorrt_exits_2_with_one_line(tmp_path):
    import onnx

    from test_runners import tiny_onnx, tiny_torch
    from tinyvim.commands.engines import build_engine
    path = tmp_path / "m.onnx"
    proto = tiny_onnx(tiny_torch(), batch=1)
    onnx.save(proto, path)
    result = CliRunner().invoke(build_engine, [str(path)])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "TensorRT is not installed" in lines[0] and "pip install" in lines[0]


def test_build_engine_checks_every_output_before_needing_tensorrt(tmp_path):
    """A bad -o, sidecar or timing-cache path is refused before TensorRT is even imported
    (here, where TensorRT is missing, that import would be the first error otherwise)."""
    import onnx

    from test_runners import tiny_onnx, tiny_torch
    from tinyvim.cli import cli        # the group: click's own usage errors are one line there too
    path = tmp_path / "m.onnx"
    onnx.save(tiny_onnx(tiny_torch(), batch=1), path)
    (tmp_path / "folder.engine").mkdir()
    (tmp_path / "m.engine.json").mkdir()          # the default engine's sidecar path is a folder
    cases = [(["-o", str(tmp_path / "folder.engine")], "is a directory"),
             (["-o", "/dev/full"], "not a regular file"),
             (["-o", str(path)], "would overwrite the input given as MODEL"),
             (["-o", str(tmp_path / "m.engine")], "sidecar"),
             (["-o", str(tmp_path / "ok.engine"), "--timing-cache", str(tmp_path / "folder.engine")],
              "--timing-cache")]
    for args, says in cases:
        result = CliRunner().invoke(cli, ["build-engine", str(path), *args])
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert result.exit_code == 2 and len(lines) == 1, (args, result.output)
        assert says in lines[0] and "TensorRT" not in lines[0], (args, lines[0])


@needs_trt
def test_tensorrt_version_supported():
    """Where TensorRT is installed: import_tensorrt accepts it, and its version passes the check
    that rejects 8.x/9.x (which would raise)."""
    import tensorrt as trt
    assert tc.import_tensorrt() is trt
    assert tc.version_at_least(trt.__version__, str(tc.MIN_TRT_MAJOR))
    tc.check_trt_version(trt.__version__)


def _fake_engine(tmp_path, metadata):
    engine = tmp_path / "m.fp16.engine"
    engine.write_bytes(b"not really an engine")
    side = sc.make_sidecar(tinyvim_version="0.1.0", trt_version="10.3.0", gpu={"name": "H100", "compute_capability": "9.0"},
                           precision="fp16", profiles=[tb.profile_shapes([None, 3, 64, 64], tb.ProfileRequest(max_batch=8))],
                           onnx_path="m.onnx",
                           onnx_sha256="0" * 64, onnx_metadata=metadata, build_seconds=1.0, strongly_typed=False,
                           plugin=None)
    sc.sidecar_path(engine).write_text(json.dumps(side))
    return engine


def test_engine_info_comes_from_the_sidecar(tmp_path):
    from tinyvim.backends.registry import read_model_info
    from tinyvim.tools.reference import resolve_reference
    engine = _fake_engine(tmp_path, ExportMetadata("b", backbone=True, input_size=(64, 64), init_seed=3,
                                                   batch=None).to_props())
    info = read_model_info(engine)
    assert info.kind == "engine" and info.backbone and info.output_names == ["feat0", "feat1", "feat2", "feat3"]
    assert info.fixed_size == (64, 64) and info.fixed_batch is None and info.precision == "fp16"
    cfg, _ = resolve_reference(info)
    assert (cfg.model.variant, cfg.model.backbone, cfg.model.weight_seed, cfg.inputs.batch) == ("b", True, 3, 1)
    with pytest.raises(TinyvimError, match="batch 1..8"):
        resolve_reference(info, batch=16)


@pytest.mark.skipif(HAVE_TRT, reason="tensorrt is installed: the missing-TensorRT path cannot be checked")
def test_validate_engine_without_tensorrt_exits_2(tmp_path):
    from tinyvim.commands.engines import validate
    engine = _fake_engine(tmp_path, ExportMetadata("s", input_size=(64, 64), batch=None).to_props())
    r = CliRunner().invoke(validate, [str(engine), "--num-inputs", "1"])
    assert r.exit_code == 2, r.output
    assert "error: TensorRT is not installed" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(validate, [str(engine), "--backend", "ort"])
    assert r.exit_code == 2 and "--backend trt" in r.output
