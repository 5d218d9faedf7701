"""The CPU libraries: `build-plugin --cpu-only` builds the fast scan and the OpenVINO extension with
CMake (no CUDA needed), and each one is the same as its on-demand cached build; a missing compiler
or missing OpenVINO headers is one line."""
import shutil

import numpy as np
import onnx
import pytest

from tinyvim.errors import TinyvimError
from tinyvim.export.scan_node import scan_node_model
from tinyvim.ops.reference import cross_selective_scan_reference, random_scan_inputs
from tinyvim.plugins import cpu_fast, ov_extension
from tinyvim.plugins.build import build
from tinyvim.plugins.errors import PluginError


def test_missing_compiler_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))          # no g++, c++ or clang++ there
    with pytest.raises(PluginError, match=r"no C\+\+ compiler found") as info:
        cpu_fast.build_library(tmp_path)
    assert "\n" not in str(info.value)


def test_missing_openvino_headers_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "libs").mkdir()
    monkeypatch.setattr(ov_extension, "openvino_root", lambda: tmp_path)   # a wheel without include/
    with pytest.raises(PluginError, match=r"no OpenVINO C\+\+ headers in .*include") as info:
        ov_extension.build_extension(tmp_path)
    assert "\n" not in str(info.value)
    monkeypatch.setenv("TINYVIM_OV_EXTENSION", str(tmp_path / "none.so"))
    with pytest.raises(TinyvimError, match="TINYVIM_OV_EXTENSION=.*no such file.*build-plugin"):
        ov_extension.extension_library()


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("cmake"), reason="cmake not found")
def test_cmake_cpu_build_matches_the_cached_builds(tmp_path, monkeypatch):
    result = build(tmp_path / "build", jobs=2, cpu_only=True,
                   targets=["tinyvim_scan_cpu_fast", "tinyvim_ov_extension"])
    fast_lib = result.built["tinyvim_scan_cpu_fast"]
    assert fast_lib.name == "libtinyvim_scan_cpu_fast.so"
    # same source and flags as the cached build: the same bits out
    inp = {k: v.astype(np.float32) for k, v in random_scan_inputs(2, 7, 5, 6, 16, seed=2).items()}
    y_cached = cpu_fast.cross_selective_scan_fast(**inp)
    cpu_fast.load_library.cache_clear()
    monkeypatch.setenv(cpu_fast.ENV_LIB, str(fast_lib))
    try:
        assert np.array_equal(cpu_fast.cross_selective_scan_fast(**inp), y_cached)
    finally:
        cpu_fast.load_library.cache_clear()
    ov = pytest.importorskip("openvino", reason="the OpenVINO extension needs the openvino extra")
    assert "tinyvim_ov_extension" in result.built, result.skipped
    core = ov.Core()
    core.add_extension(str(result.built["tinyvim_ov_extension"]))
    onnx.save(scan_node_model(7, 16), tmp_path / "scan.onnx")
    y = core.compile_model(str(tmp_path / "scan.onnx"), "CPU")(inp)[0]
    ref = cross_selective_scan_reference(**inp)
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()
