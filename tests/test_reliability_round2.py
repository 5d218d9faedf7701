"""Reliability round 2 (issue 15), the validate / profile / backend side, and the typed engine
sidecar (issue 14): each root cause as a test - exit code, one `error:` line, no traceback,
nothing left behind."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from tinyvim.backends import registry
from tinyvim.backends.ort.runner import OrtRunner
from tinyvim.backends.registry import read_model_info
from tinyvim.backends.trt.sidecar import EngineSidecar, read_sidecar, sidecar_path
from tinyvim.cli import cli
from tinyvim.errors import TinyvimError, error_reason
from tinyvim.tools import inputs, per_block
from tinyvim.tools.per_block import Tap, format_per_block, per_block_rows
from tinyvim.utils import file_sha256

ROOT = Path(__file__).resolve().parents[1]


def one_error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip() and not ln.startswith(("note:", "warning:", "validating "))]
    assert "Traceback" not in result.output, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def _signature_graph(nodes, inits, images_type=TensorProto.FLOAT) -> onnx.ModelProto:
    """A graph with TinyViM's signature (images (1, 3, 64, 64) -> logits (1, 1000))."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", images_type, [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _head(source: str) -> tuple[list, list]:
    """source (1, 3, 64, 64) float -> logits (1, 1000)."""
    w = numpy_helper.from_array(np.ones((3, 1000), np.float32), "w")
    return [helper.make_node("GlobalAveragePool", [source], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("MatMul", ["f", "w"], ["logits"])], [w]


# --------------------------------------------------------------------- 6: ONNX Runtime errors
def test_int64_images_input_is_one_line_before_inference(tmp_path):
    nodes, inits = _head("x")
    path = tmp_path / "int64.onnx"
    onnx.save(_signature_graph([helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT), *nodes], inits,
                               images_type=TensorProto.INT64), path)
    with pytest.raises(TinyvimError, match=r"input images is tensor\(int64\); TinyViM exports take float images"):
        OrtRunner(path).activate()
    r = CliRunner().invoke(cli, ["validate", str(path), "--variant", "s", "--num-inputs", "1"])
    assert r.exit_code == 2 and "tensor(int64)" in one_error_line(r)


def test_an_allocation_failure_inside_onnx_runtime_is_one_line(tmp_path):
    """A 2^40-element ConstantOfShape fed by the input (so it cannot be folded at load) fails
    inside session.run: one line, exit 2, not onnxruntime's traceback."""
    shape = numpy_helper.from_array(np.array([1 << 40], np.int64), "n")
    nodes, inits = _head("images")
    big = [helper.make_node("Shape", ["images"], ["s"]), helper.make_node("ReduceProd", ["s"], ["k"], keepdims=1),
           helper.make_node("Mul", ["k", "n"], ["kk"]), helper.make_node("ConstantOfShape", ["kk"], ["big"]),
           helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0)]
    nodes[-1] = helper.make_node("MatMul", ["f", "w"], ["m"])
    nodes.append(helper.make_node("Add", ["m", "total"], ["logits"]))
    path = tmp_path / "huge.onnx"
    onnx.save(_signature_graph(big + nodes, inits + [shape]), path)
    r = CliRunner().invoke(cli, ["validate", str(path), "--variant", "s", "--num-inputs", "1"])
    assert r.exit_code == 2, r.output
    assert "ONNX Runtime" in one_error_line(r)


def test_error_reason_keeps_the_reason_not_the_location():
    exc = RuntimeError("Exception from src/inference/src/cpp/core.cpp:112:\nException from src/x.cpp:3:\n"
                       "Check 'false' failed at src/frontends/onnx/frontend/src/core/graph.cpp:405:\n"
                       "FrontEnd API failed with GeneralFailure:\nunsupported data type: int4\n\n")
    assert error_reason(exc) == "FrontEnd API failed with GeneralFailure: unsupported data type: int4"
    assert error_reason(ValueError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : bad alloc")).endswith("bad alloc")
    assert len(error_reason(RuntimeError("x" * 1000))) == 300 and error_reason(KeyError()) == "KeyError"


# --------------------------------------------------------------------- 4: per-block with NaN/Inf
def test_per_block_names_the_first_nonfinite_block():
    taps = [Tap("patch_embed", "stem", None, "a"), Tap("network.0.0", "block", 0, "b"),
            Tap("network.0.1", "block", 0, "c"), Tap("logits", "output", None, "logits")]
    rng = np.random.default_rng(0)
    reference = {t.module: rng.standard_normal((2, 8)).astype(np.float32) for t in taps}
    candidate = {per_block.tap_key(t): reference[t.module] + 1e-7 for t in taps}
    candidate[per_block.tap_key(taps[2])] = np.where(np.arange(16).reshape(2, 8) == 5, np.nan,
                                                     reference["network.0.1"])
    candidate["logits"] = np.full((2, 8), np.inf, np.float32)
    from tinyvim.tools.compare import tolerance_for
    rows, jump, first = per_block_rows(taps, reference, candidate, tolerance_for("fp32"), "fp32")
    assert first == "network.0.1" and jump is None
    assert [r["nonfinite_candidate"] for r in rows] == [0, 0, 1, 16]
    text = format_per_block({"batch": 2, "rows": rows, "first_jump": first, "first_nonfinite": first,
                             "noise_floor": 1e-6})
    assert "nan" not in text.lower().replace("nan/inf", "")           # no `nan` numbers printed
    assert "network.0.1" in text and "first non-finite values here" in text and "evenly" not in text
    assert "the first NaN/Inf appears in network.0.1" in text


# --------------------------------------------------------------------- 11: bounded image memory
def test_a_long_thin_picture_is_preprocessed_in_bounded_memory(tmp_path):
    """A 100000 x 1 px PNG (a few hundred bytes) once took 2.7 GB to resize; now the crop's
    source region is resampled directly. Peak RSS of a fresh process is measured."""
    path = tmp_path / "thin.png"
    Image.fromarray((np.arange(100000) % 251).astype(np.uint8)[None, :].repeat(3, 0).T[None]).save(path)
    assert Image.open(path).size == (100000, 1)
    # VmHWM: this process's own peak (ru_maxrss would carry pytest's peak across the exec)
    code = ("from tinyvim.tools.inputs import preprocess_image\n"
            f"x = preprocess_image({str(path)!r}, (224, 224))\n"
            "assert x.shape == (3, 224, 224) and x.dtype.name == 'float32'\n"
            "print(next(int(ln.split()[1]) for ln in open('/proc/self/status') if ln.startswith('VmHWM')) // 1024)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[-1]) < 300, f"peak RSS {r.stdout.split()[-1]} MB"     # ~40 MB measured


def test_the_direct_crop_path_matches_resize_then_crop(tmp_path, monkeypatch):
    """Where both fit in memory, resampling only the crop's source region gives the same picture
    as resizing the whole one and cropping (away from the borders, bicubic sees the same pixels):
    the bounded path is the same preprocessing, not a different one."""
    rng = np.random.default_rng(1)
    path = tmp_path / "wide.png"
    Image.fromarray(rng.integers(0, 255, (48, 2400, 3), dtype=np.uint8)).save(path)
    full = inputs.preprocess_image(path, (64, 64))
    monkeypatch.setattr(inputs, "MAX_RESIZED_PIXELS", 1)
    direct = inputs.preprocess_image(path, (64, 64))
    inner = (slice(None), slice(4, -4), slice(4, -4))
    assert np.abs(full[inner] - direct[inner]).mean() < 0.02      # ~0.1 % of the normalised range (~4.5)
    assert np.abs(full - direct).max() < 0.5


def test_oversized_pictures_and_crops_are_refused_in_one_line(tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    Image.new("L", (9000, 8000)).save(folder / "huge.png")          # 69 Mpx: above what tinyvim decodes
    with pytest.raises(TinyvimError, match=r"9000x8000 \(69 Mpx\), above the 64 Mpx tinyvim decodes"):
        inputs.list_images(folder, 1)
    for bad in (0.001, 0.0, 1.5):
        with pytest.raises(TinyvimError, match="--crop-pct"):
            inputs.check_crop_pct(bad)


def test_pil_warnings_are_not_printed_raw(tmp_path, recwarn):
    path = tmp_path / "p.png"
    Image.new("P", (64, 64)).save(path, transparency=b"\x00" * 8)   # PIL warns when converting this palette
    inputs.preprocess_image(path, (32, 32))
    assert not [w for w in recwarn if "PIL" in str(w.filename) or "Image" in str(w.message)]


# --------------------------------------------------------------------- options of another backend
def test_options_of_another_backend_are_warned(tinyvim_onnx):
    r = CliRunner().invoke(cli, ["validate", str(tinyvim_onnx), "--backend", "ort", "--ov-precision", "bf16",
                                 "--num-inputs", "1"])
    assert r.exit_code == 0, r.output
    assert "warning: --ov-precision applies to --backend ov only: ignored for ort" in r.output
    assert registry.unused_option_warnings([registry.get_backend("ov")], {"ov_precision": "bf16"}) == []


# --------------------------------------------------------------------- 12: profile's temporary folder
def test_sigterm_during_profile_leaves_no_temporary_folder(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "tinyvim.cli", "profile", "--backend", "ort", "--img-size", "64",
                             "--iters", "1", "--warmup", "0"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob("tinyvim-profile-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert list(tmp_path.glob("tinyvim-profile-*")), "profile never made its temporary folder"
    time.sleep(0.5)                               # inside the export, which takes seconds
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGTERM, err
    assert "Traceback" not in err
    assert not list(tmp_path.iterdir()), list(tmp_path.iterdir())


# --------------------------------------------------------------------- typed sidecar, per-block on an engine
def _stand_in_engine(onnx_path: Path, engine: Path, precision: str = "fp32", batch: int = 2) -> EngineSidecar:
    """An 'engine' that is a copy of its ONNX, with the sidecar the builder writes (same class)."""
    shutil.copyfile(onnx_path, engine)
    meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    shapes = [batch, 3, 64, 64]
    side = EngineSidecar(tinyvim_version="0.1.0", tensorrt_version="10.16.0", gpu_name="stand-in",
                         compute_capability="9.0", precision=precision, strongly_typed=False,
                         profiles=[{"images": {"min": shapes, "opt": shapes, "max": shapes}}],
                         onnx_path=os.path.abspath(onnx_path), onnx_sha256=file_sha256(onnx_path),
                         onnx_metadata=meta, build_seconds=0.0)
    side.write(engine)
    return side


def test_sidecar_round_trips_through_the_one_class(tmp_path, tinyvim_onnx):
    side = _stand_in_engine(tinyvim_onnx, tmp_path / "m.engine")
    assert read_sidecar(tmp_path / "m.engine") == side
    doc = json.loads(sidecar_path(tmp_path / "m.engine").read_text())
    assert doc["onnx"] == {"path": os.path.abspath(tinyvim_onnx), "sha256": file_sha256(tinyvim_onnx)}
    assert Path(doc["onnx"]["path"]).is_absolute()
    info = read_model_info(tmp_path / "m.engine")
    assert info.kind == "engine" and info.batch_range == (2, 2) and info.metadata.variant == "s"


def test_validate_per_block_on_an_engine_end_to_end(tmp_path, tinyvim_onnx, monkeypatch):
    """The public `validate --per-block` on an engine: the sidecar names the source ONNX, the
    engine is rebuilt from the marked copy (stand-in build), and both run on a stand-in for
    TensorRT that runs each engine's own ONNX with ONNX Runtime (no TensorRT here)."""
    engine = tmp_path / "m.engine"
    _stand_in_engine(tinyvim_onnx, engine)
    builds = []

    def build_engine(onnx_path, output, *, precision, min_batch, opt_batch, max_batch, **kwargs):
        builds.append((Path(onnx_path).name, precision, min_batch, max_batch))
        _stand_in_engine(Path(onnx_path), Path(output), precision, max_batch)
        return SimpleNamespace(engine_path=Path(output))

    def trt_stand_in(req):
        return OrtRunner(read_sidecar(req.model.path).onnx_path, threads=req.threads, name="trt")

    monkeypatch.setattr(per_block, "build_engine", build_engine)
    monkeypatch.setitem(registry._REGISTRY, "trt", dataclasses.replace(registry.get_backend("trt"),
                                                                       make_runner=trt_stand_in))
    report_path = tmp_path / "r.json"
    r = CliRunner().invoke(cli, ["validate", str(engine), "--per-block", "--num-inputs", "1",
                                 "--json", str(report_path)])
    assert r.exit_code == 0, r.output
    report = json.loads(report_path.read_text())
    assert report["passed"] and report["model"]["kind"] == "engine" and report["backend"]["name"] == "trt"
    assert builds == [("marked.onnx", "fp32", 2, 2)]
    section = report["per_block"]
    assert section["first_jump"] is None and section["first_nonfinite"] is None
    assert len(section["rows"]) > 20 and max(row["scaled_err"] for row in section["rows"]) < 1e-4
    assert "per-block comparison" in r.output
