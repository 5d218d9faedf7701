"""`tinyvim build-plugin` (CPU-only build; clean one-line failures) and find_plugin_library."""
import shutil

import pytest
from click.testing import CliRunner

from tinyvim.commands.plugins import build_plugin
from tinyvim.plugins import PluginError, find_cuda_library, find_plugin_library
from tinyvim.plugins.build import PLUGIN_NOT_FOUND


@pytest.mark.skipif(not shutil.which("cmake"), reason="cmake not found")
def test_build_plugin_cpu_only_reports_built_and_skipped(tmp_path):
    r = CliRunner().invoke(build_plugin, ["--build-dir", str(tmp_path / "b"), "--cpu-only", "-j", "2"])
    assert r.exit_code == 0, r.output
    assert "built    tinyvim_scan_cpu" in r.output
    assert str(tmp_path / "b" / "lib" / "libtinyvim_scan_cpu.so") in r.output
    assert "skipped  tinyvim_trt_plugin" in r.output and "CUDA disabled" in r.output


def test_build_plugin_missing_tools_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))          # no cmake, no g++, no nvcc on PATH
    monkeypatch.setenv("CUDACXX", str(tmp_path / "nvcc"))
    monkeypatch.delenv("CXX", raising=False)
    r = CliRunner().invoke(build_plugin, ["--build-dir", str(tmp_path / "b")])
    assert r.exit_code == 2                  # a missing dependency (README: exit codes)
    assert r.exception is None or isinstance(r.exception, SystemExit)   # no traceback
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "cmake not found" in lines[0] and "g++" in lines[0]
    assert "building tinyvim plugins" not in r.output and not (tmp_path / "b").exists()


def test_build_plugin_rejects_bad_tensorrt_root(tmp_path):
    if not shutil.which("cmake"):
        pytest.skip("cmake not found")
    r = CliRunner().invoke(build_plugin, ["--build-dir", str(tmp_path / "b"), "--cpu-only",
                                          "--tensorrt-root", str(tmp_path)])
    assert r.exit_code == 2 and "no include/NvInfer.h" in r.output


def test_find_plugin_library(tmp_path, monkeypatch):
    monkeypatch.delenv("TINYVIM_TRT_PLUGIN", raising=False)
    monkeypatch.setenv("TINYVIM_PLUGIN_BUILD_DIR", str(tmp_path / "none"))
    # Neither the env var, nor the cache folder, nor <repo>/build/plugins holds one.
    try:
        path = find_plugin_library()
    except PluginError as e:
        assert str(e) == PLUGIN_NOT_FOUND
        assert "tinyvim build-plugin" in str(e) and "TENSORRT_ROOT" in str(e)
    else:   # a developer built one in <repo>/build/plugins: it must be a real file
        assert path.is_file()
    lib = tmp_path / "b" / "lib" / "libtinyvim_trt_plugin.so"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"")
    assert find_plugin_library(tmp_path / "b") == lib
    monkeypatch.setenv("TINYVIM_PLUGIN_BUILD_DIR", str(tmp_path / "b"))
    assert find_plugin_library() == lib
    monkeypatch.setenv("TINYVIM_TRT_PLUGIN", str(lib))
    assert find_plugin_library() == lib
    monkeypatch.setenv("TINYVIM_TRT_PLUGIN", str(tmp_path / "missing.so"))
    with pytest.raises(PluginError, match="TINYVIM_TRT_PLUGIN"):
        find_plugin_library()
    monkeypatch.setenv("TINYVIM_SCAN_CUDA_LIB", str(tmp_path / "missing.so"))
    with pytest.raises(PluginError, match="TINYVIM_SCAN_CUDA_LIB"):
        find_cuda_library()
