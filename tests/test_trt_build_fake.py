"""`build_engine` and the engine loader through the real Polygraphy loaders, against a recording
stand-in for the tensorrt module (fake_tensorrt.py; every name it defines exists in the real
bindings of its version - test_trt_python_api.py). Checks our use of TensorRT and Polygraphy
on machines without either GPU or TensorRT: order of plugin registration, network typing,
builder flags, fp32 pinning, profile, timing cache, atomic outputs, sidecar, the equivalent
command lines. TensorRT itself is checked on GPU machines."""
from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

import fake_tensorrt
from scan_models import scan_onnx
from tinyvim.utils import file_sha256
from tinyvim.backends.trt import sidecar as sc
from tinyvim.contract import ExportMetadata
from tinyvim.backends.trt import builder as trt_build, common as trt_common, runner as trt_runner
from tinyvim.errors import TinyvimError

polygraphy = pytest.importorskip("polygraphy", reason="polygraphy is not installed (pip install polygraphy)")

TRT10, TRT11 = "10.16.0.72", "11.1.0.106"


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """fake(version, **kw) installs a fake tensorrt for tinyvim and for Polygraphy's lazy
    imports; returns (module, events)."""
    from polygraphy.backend.trt import util as poly_trt_util

    def reset_polygraphy():
        # Polygraphy imports tensorrt lazily and keeps what it got; start every test afresh.
        for name, module in list(sys.modules.items()):
            if name.startswith("polygraphy"):
                for value in list(vars(module).values()):
                    if type(value).__name__ == "LazyModule":
                        object.__setattr__(value, "module", None)
        poly_trt_util.TRT_LOGGER = None

    def install(version=TRT10, **kwargs):
        events = []
        module = fake_tensorrt.make(version, events, **kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        reset_polygraphy()
        return module, events

    gpu = {"name": "Fake GPU", "compute_capability": "9.0"}
    for mod in (trt_build, trt_runner):
        monkeypatch.setattr(mod, "gpu_info", lambda: gpu)
    monkeypatch.setattr(trt_common, "_registered", {})
    yield install
    monkeypatch.undo()
    reset_polygraphy()


@pytest.fixture
def plugin_lib(tmp_path):
    lib = tmp_path / "lib" / "libtinyvim_trt_plugin.so"
    lib.parent.mkdir()
    lib.write_bytes(b"\x7fELF")        # the fake registry only records the path
    return lib


def _index(events, kind):
    return next(i for i, e in enumerate(events) if e[0] == kind)


def test_fp16_on_10x_pins_the_scan_and_registers_the_plugin_before_parsing(fake, plugin_lib, tmp_path):
    trt, events = fake(TRT10)
    onnx_path = scan_onnx(tmp_path / "m.onnx")
    (tmp_path / "t.cache").write_bytes(b"old")
    lines = []
    result = trt_build.build_engine(onnx_path, tmp_path / "out" / "m.engine", precision="fp16",
                                    shapes=trt_build.ProfileRequest(min_batch=1, opt_batch=4, max_batch=8),
                                    workspace_mib=256, timing_cache=tmp_path / "t.cache", builder_optimization_level=4,
                                    plugin=plugin_lib, log=lines.append)
    assert _index(events, "load_library") < _index(events, "parse") < _index(events, "build")
    assert ("load_library", str(plugin_lib)) in events
    assert ("network_flags", 0) in events                                  # weakly typed on 10.x
    flags = [e for e in events if e[0] in ("set_flag", "clear_flag")]
    assert ("set_flag", "FP16") in flags and ("set_flag", "OBEY_PRECISION_CONSTRAINTS") in flags
    assert ("clear_flag", "TF32") in flags and ("set_flag", "TF32") not in flags
    pinned = {e[1] for e in events if e[0] == "precision"}
    assert pinned == {"node_scan_1", "node_softplus_2", "n3"}               # not the convolution
    assert pinned == {e[1] for e in events if e[0] == "output_type"}
    assert ("profile", "images", [1, 3, 64, 64], [4, 3, 64, 64], [8, 3, 64, 64]) in events
    assert ("pool_limit", "WORKSPACE", 256 << 20) in events and ("timing_cache_in", b"old") in events
    assert ("builder_optimization_level", 4) in events and ("progress_monitor",) in events
    # outputs written atomically; the cache holds the old entries plus this build's
    assert result.engine_path.read_bytes() == b"ENGINE"
    assert (tmp_path / "t.cache").read_bytes() == b"old+timings"
    assert sorted(p.name for p in result.engine_path.parent.iterdir()) == ["m.engine", "m.engine.json"]
    side = json.loads(result.sidecar_path.read_text())
    assert side["tensorrt_version"] == TRT10 and side["gpu_name"] == "Fake GPU" and side["precision"] == "fp16"
    assert side["plugin"] == str(plugin_lib) and side["tf32"] is False and not side["strongly_typed"]
    assert side["onnx_metadata"]["scan"] == "plugin" and side["onnx"]["sha256"] == file_sha256(onnx_path)
    trtexec, poly = side["commands"]["trtexec"], side["commands"]["polygraphy"]
    assert f"--dynamicPlugins={plugin_lib}" in trtexec and "--fp16" in trtexec and "--noTF32" in trtexec
    assert "--layerPrecisions=node_scan_1:fp32,node_softplus_2:fp32,n3:fp32" in trtexec
    assert "--minShapes=images:1x3x64x64" in trtexec and "--maxShapes=images:8x3x64x64" in trtexec
    assert f"--plugins {plugin_lib.with_name('libtinyvim_trt_plugin_autoreg.so')}" in poly
    assert "--trt-opt-shapes 'images:[4,3,64,64]'" in poly and "--layer-precisions node_scan_1:float32" in poly
    assert f"[build] same build with trtexec: {trtexec}" in lines and "[build] 3 layers pinned to fp32" in lines


def test_11x_builds_strongly_typed_without_precision_flags(fake, plugin_lib, tmp_path):
    trt, events = fake(TRT11)          # this fake has no FP16 flag and no per-layer precision
    onnx_path = scan_onnx(tmp_path / "m16.onnx", precision="fp16")
    result = trt_build.build_engine(onnx_path, tmp_path / "m.engine", precision="fp16",
                                    shapes=trt_build.ProfileRequest(max_batch=2), plugin=plugin_lib, log=lambda s: None)
    assert ("network_flags", 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)) in events
    assert [e for e in events if e[0] in ("set_flag", "clear_flag")] == [("clear_flag", "TF32")]
    assert not [e for e in events if e[0] in ("precision", "output_type")]
    assert ("profile", "images", [1, 3, 64, 64], [2, 3, 64, 64], [2, 3, 64, 64]) in events
    commands = result.commands
    assert "--stronglyTyped" not in commands["trtexec"] and "--fp16" not in commands["trtexec"]
    assert "--strongly-typed" in commands["polygraphy"] and result.sidecar.strongly_typed
    with pytest.raises(TinyvimError, match="strongly typed networks only"):
        trt_build.build_engine(scan_onnx(tmp_path / "m32.onnx"), precision="fp16", plugin=plugin_lib)


def test_tf32_only_on_request(fake, tmp_path, plugin_lib):
    trt, events = fake(TRT10)
    result = trt_build.build_engine(scan_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", tf32=True,
                                    plugin=plugin_lib, log=lambda s: None)
    assert ("set_flag", "TF32") in events and ("clear_flag", "TF32") not in events
    assert "--tf32" in result.commands["polygraphy"] and "--noTF32" not in result.commands["trtexec"]
    assert result.sidecar.tf32 is True


def test_dynamic_image_size_gets_an_hw_range(fake, tmp_path, plugin_lib):
    trt, events = fake(TRT10)
    onnx_path = scan_onnx(tmp_path / "dyn.onnx", size=None)
    with pytest.raises(TinyvimError, match="dynamic image size: give the range with --min-shape"):
        trt_build.build_engine(onnx_path, shapes=trt_build.ProfileRequest(max_batch=4), plugin=plugin_lib)
    result = trt_build.build_engine(onnx_path, tmp_path / "d.engine",
                                    shapes=trt_build.ProfileRequest(min_shape="1x128x128", opt_shape="4x224x224", max_shape="8x320x256"),
                                    plugin=plugin_lib, log=lambda s: None)
    assert ("profile", "images", [1, 3, 128, 128], [4, 3, 224, 224], [8, 3, 320, 256]) in events
    assert result.sidecar.profiles == [{"images": {"min": [1, 3, 128, 128], "opt": [4, 3, 224, 224],
                                                      "max": [8, 3, 320, 256]}}]
    assert "--maxShapes=images:8x3x320x256" in result.commands["trtexec"]


def test_parser_failure_is_one_line_with_the_fix(fake, tmp_path, plugin_lib):
    trt, events = fake(TRT10)
    onnx_path = scan_onnx(tmp_path / "m.onnx", namespace="")     # no creator in namespace ""
    with pytest.raises(TinyvimError) as err:
        trt_build.build_engine(onnx_path, tmp_path / "m.engine", plugin=plugin_lib, log=lambda s: None)
    message = str(err.value)
    assert "Plugin not found, are the plugin name, version, and namespace correct?" in message
    assert "--plugin PATH" in message and "\n" not in message
    assert not (tmp_path / "m.engine").exists() and ("build",) not in events


def test_missing_or_refused_plugin_library_is_one_line(fake, tmp_path, plugin_lib):
    fake(TRT10)
    onnx_path = scan_onnx(tmp_path / "m.onnx")
    with pytest.raises(TinyvimError, match="does not exist: build it with `tinyvim build-plugin"):
        trt_build.build_engine(onnx_path, plugin=tmp_path / "missing.so")
    trt, events = fake(TRT10, refuse_libraries=True)
    with pytest.raises(TinyvimError, match=f"TensorRT {TRT10} refused the plugin library .*rebuild it"):
        trt_build.build_engine(onnx_path, plugin=plugin_lib)
    assert [e[0] for e in events] == ["load_library"]        # nothing parsed


def _engine_with_sidecar(tmp_path, plugin, data=b"ENGINE"):
    engine = tmp_path / "m.engine"
    engine.write_bytes(data)
    side = sc.make_sidecar(tinyvim_version="0.1.0", trt_version=TRT10, gpu={"name": "Fake GPU",
                                   "compute_capability": "9.0"}, precision="fp32",
                                   profiles=[trt_build.profile_shapes([None, 3, 64, 64], trt_build.ProfileRequest(max_batch=2))],
                                   onnx_path="m.onnx", onnx_sha256="0" * 64,
                                   onnx_metadata=ExportMetadata("s", input_size=(64, 64), batch=None,
                                                                scan="plugin").to_props(),
                                   build_seconds=1.0, strongly_typed=False, plugin=str(plugin))
    sc.sidecar_path(engine).write_text(json.dumps(side))
    return engine


def test_engine_loading_registers_the_plugin_before_deserializing(fake, tmp_path, plugin_lib):
    trt, events = fake(TRT10)
    engine = _engine_with_sidecar(tmp_path, plugin_lib)
    module, loaded = trt_runner.load_engine(engine, log=lambda s: None)
    assert module is trt and isinstance(loaded, trt.ICudaEngine)
    assert [e[0] for e in events] == ["load_library", "deserialize"]
    assert events[0] == ("load_library", str(plugin_lib))
    bad = _engine_with_sidecar(tmp_path / "..", plugin_lib, data=b"junk")
    with pytest.raises(TinyvimError, match="could not deserialize .* pass the scan plugin with --plugin"):
        trt_runner.load_engine(bad, log=lambda s: None)
    fake("10.17.0.1")                       # another TensorRT than the engine's: refused before loading
    with pytest.raises(TinyvimError, match="built with TensorRT 10.16.0.72 but TensorRT 10.17.0.1"):
        trt_runner.load_engine(engine, log=lambda s: None)


def test_cli_builds_and_reports_bad_profiles_in_one_line(fake, tmp_path, plugin_lib):
    from tinyvim.commands.engines import build_engine
    fake(TRT10)
    onnx_path = scan_onnx(tmp_path / "m.onnx")
    r = CliRunner().invoke(build_engine, [str(onnx_path), "--plugin", str(plugin_lib), "--max-batch", "4"])
    assert r.exit_code == 0, r.output
    assert f"wrote {tmp_path / 'm.fp32.engine'}" in r.output and "same build with polygraphy: polygraphy convert" in r.output
    for args, message in ((["--min-shape", "1x64x64", "--max-batch", "4"], "not both"),
                          (["--max-shape", "4x96x64"], "fixed image size of 64x64"),
                          (["--min-shape", "8x64x64", "--max-shape", "2x64x64"], "min (8x64x64) <= opt"),
                          # NCHW habit: the option is named and the form recalled
                          (["--min-shape", "1x3x64"], "--min-shape 1x3x64: input size 3x64 is not divisible by 32")):
        r = CliRunner().invoke(build_engine, [str(onnx_path), "--plugin", str(plugin_lib), *args])
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and message in lines[0], (args, r.output)


def test_load_engine_names_a_missing_plugin_before_needing_tensorrt(tmp_path, monkeypatch):
    """`validate/profile --plugin WRONG` on a machine without TensorRT: the wrong path is said,
    not "install TensorRT" (which would be followed by the path error after installing it)."""
    def no_tensorrt():
        raise TinyvimError("TensorRT is not installed")
    monkeypatch.setattr(trt_runner, "import_tensorrt", no_tensorrt)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine bytes")
    with pytest.raises(TinyvimError, match=f"plugin library {tmp_path / 'gone.so'} does not exist"):
        trt_runner.load_engine(engine, plugin=tmp_path / "gone.so")
    with pytest.raises(TinyvimError, match="TensorRT is not installed"):    # no plugin given: that far
        trt_runner.load_engine(engine)
