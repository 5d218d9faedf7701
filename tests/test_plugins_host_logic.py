"""The TensorRT plugin's host logic (csrc/plugin_logic.cpp: field parsing, serialization
round trip, shape/type/format rules, launch arguments), through its C++ unit-test
executable, built with CMake (CPU only: no nvcc or TensorRT needed) and run here."""
import re
import shutil
import subprocess

import pytest

from tinyvim.plugins.build import build

pytestmark = pytest.mark.skipif(not shutil.which("cmake") or not (shutil.which("g++") or shutil.which("c++")),
                                reason="cmake and a C++ compiler are needed to build the host-logic tests")


def test_plugin_logic_unit_tests_pass(tmp_path):
    result = build(tmp_path / "build", cpu_only=True, jobs=2, targets=["tinyvim_plugin_logic_test"])
    exe = result.built["tinyvim_plugin_logic_test"]
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = re.search(r"(\d+) checks, (\d+) failures", proc.stdout)
    assert m, proc.stdout
    # ~300 checks: the exhaustive format-combination table alone has 256.
    assert int(m.group(1)) >= 300 and int(m.group(2)) == 0
