"""A backend is one declaration plus one `register(...)` line: nothing else in the project needs
to change for it to appear on the commands, be looked up by validate and profile, and run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinyvim.backends import registry
from tinyvim.backends.ort.runner import OrtRunner
from tinyvim.backends.spec import Backend, BackendOption
from tinyvim.errors import TinyvimError

ROOT = Path(__file__).resolve().parents[1]

#: the whole of a new backend, as a user's plugin module would write it: a runner (here ORT's,
#: renamed, recording the option it was given) and its declaration, registered with one line
NEW_BACKEND = '''
from tinyvim.backends.ort.runner import OrtRunner
from tinyvim.backends.registry import register
from tinyvim.backends.spec import Backend, BackendOption

class EchoRunner(OrtRunner):
    pass

def make(req):
    runner = EchoRunner(req.model.path, threads=req.threads, name="echo")
    runner.tag = req.option("echo_tag")
    print("ECHO-TAG", runner.tag, "timed" if req.timed else "checked", flush=True)
    return runner

register(Backend("echo", "ORT under another name", make, model_kinds=("onnx",), exports_onnx=True,
                 options=(BackendOption("echo_tag", "--echo-tag", "A tag the runner prints."),)))
'''


def _tinyvim(args, tmp_path) -> subprocess.CompletedProcess:
    """`tinyvim ARGS` in a fresh interpreter that registered the new backend first."""
    script = NEW_BACKEND + f"\nfrom tinyvim.cli import main\nmain({[str(a) for a in args]!r})\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600,
                          cwd=tmp_path)


def test_one_register_line_adds_a_backend_to_validate_and_profile(tinyvim_onnx, tmp_path):
    r = _tinyvim(["validate", "--help"], tmp_path)
    assert r.returncode == 0 and "--echo-tag" in r.stdout and "echo" in r.stdout       # its flag, by itself
    r = _tinyvim(["validate", tinyvim_onnx, "--backend", "echo", "--echo-tag", "hello", "--num-inputs", "1",
                  "--json", tmp_path / "v.json"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "ECHO-TAG hello checked" in r.stdout
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["passed"] and report["backend"]["name"] == "echo"
    assert report["backend"]["options"] == {"echo_tag": "hello"}
    r = _tinyvim(["profile", "--backend", "echo", "--model", tinyvim_onnx, "--img-size", "64", "--batch", "2",
                  "--warmup", "0", "--iters", "2", "--echo-tag", "t2", "--json", tmp_path / "p.json"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "ECHO-TAG t2 timed" in r.stdout
    results = json.loads((tmp_path / "p.json").read_text())["results"]
    assert [(e["backend"], e["batch"]) for e in results] == [("echo", 2)]


def test_registry_refuses_what_would_make_flags_or_files_ambiguous():
    def make(req):
        return OrtRunner(req.model.path)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(Backend("ort", "again", make))
    with pytest.raises(ValueError, match="clashes"):
        registry.register(Backend("x1", "", make, options=(BackendOption("providers", "--other", "h"),)))
    with pytest.raises(ValueError, match="FILE_KINDS"):
        registry.register(Backend("x2", "", make, readers={"tflite": lambda p: None}))
    assert "x1" not in registry.backend_names() and "x2" not in registry.backend_names()
    with pytest.raises(TinyvimError, match="unknown backend 'nope'; choose from torch, torch-fused, ort, trt, ov"):
        registry.get_backend("nope")


def test_file_kinds_are_read_by_the_backend_that_owns_them(tinyvim_onnx, tmp_path):
    """ONNX by model_file, .xml by ov, .engine by trt: read_model_info dispatches on the contract's
    suffixes; each reader says what is wrong in one line."""
    assert registry.read_model_info(tinyvim_onnx).kind == "onnx"
    with pytest.raises(TinyvimError, match="no such file"):
        registry.read_model_info(tmp_path / "m.engine")
    (tmp_path / "m.xml").write_text("<net/>")
    with pytest.raises(TinyvimError, match="no weights file m.bin"):
        registry.read_model_info(tmp_path / "m.xml")
    assert set(registry.file_readers()) == {"onnx", "openvino", "engine"}
