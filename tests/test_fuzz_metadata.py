"""Fuzzing what model files say about themselves: ONNX metadata_props (through the typed
ExportMetadata), graph dimensions, and TensorRT engine sidecars. Each value is either accepted
within its declared range or refused in one line (exit 2) before anything is allocated."""
from __future__ import annotations

import dataclasses
import json
import math

import onnx
import pytest
from click.testing import CliRunner
from hypothesis import event, given, settings
from hypothesis import strategies as st

from test_runners import tiny_onnx, tiny_torch
from tinyvim.backends.trt import sidecar as sc
from tinyvim.cli import cli
from tinyvim.contract import MAX_BATCH, MAX_BATCH_PIXELS, MAX_IMAGE_SIDE, ExportMetadata
from tinyvim.backends.trt.model_file import read_engine_info
from tinyvim.errors import TinyvimError

VALID = ExportMetadata("s", input_size=(64, 64), batch=2, init_seed=3).to_props()

#: values that must be refused, per key (garbage, overflow, out of range, wrong syntax)
BAD_VALUES = {
    "variant": ["x", "S ", "", "tinyvim-s", "s\n"],
    "backbone": ["yes", "1", "True", ""],
    "ema": ["no", "0", "FALSE"],
    "checkpoint": ["a\nb", "x" * 5000, "\x00"],
    "checkpoint_sha256": ["abc", "G" * 64, "0" * 63, "0" * 65, "0" * 64 + "\n"],
    "init_seed": ["-1", "nan", "1e3", str(2**63), "9" * 40, "", " 3", "0x10", "３"],
    "input_size": ["64", "64x", "x64", "63x64", "64x0", "0x0", f"{MAX_IMAGE_SIDE + 32}x64", "99999999x64",
                   "64x64x64", "-64x64", "64,64", "dynamicx64"],
    "batch": ["0", "-1", str(MAX_BATCH + 1), "9" * 30, "1.5", "", "two", "nan"],
    "mean": ["1,2", "1,2,3,4", "nan,0,0", "inf,0,0", "a,b,c", "1e999,0,0", ""],
    "std": ["0,1,1", "-1,1,1", "1,1,nan", "1,1", "1,1,inf"],
    "scan": ["fast", "", "PORTABLE"],
    "opset": ["17", "100", "-1", "20.0", "9" * 25],
    "precision": ["fp64", "int4", "", "bf16"],
    "weights": ["fp64", "", "FP16", "bf16"],
    "tinyvim_version": ["\x07", "v" * 5000],
}


def _props_with(key, value) -> dict:
    props = dict(VALID)
    props[key] = value
    return props


@pytest.mark.parametrize("key,value", [(k, v) for k, vs in BAD_VALUES.items() for v in vs])
def test_each_bad_value_is_refused_naming_the_key(key, value):
    with pytest.raises(TinyvimError) as err:
        ExportMetadata.from_props(_props_with(key, value), source="m.onnx")
    assert f"metadata {key!r} is invalid" in str(err.value) and "\n" not in str(err.value)


def test_batch_times_size_is_bounded():
    with pytest.raises(TinyvimError, match="pixels per call, above the limit"):
        ExportMetadata.from_props({**VALID, "input_size": "4096x4096", "batch": "4096"}, source="m.onnx")
    assert MAX_BATCH_PIXELS * 12 < 4 * 2**30      # the bound keeps one float32 input under 4 GiB (3 copies)


def test_missing_keys_and_foreign_files():
    assert ExportMetadata.from_props({"producer": "someone"}, source="m") is None
    with pytest.raises(TinyvimError, match="incomplete"):
        ExportMetadata.from_props({k: v for k, v in VALID.items() if k != "opset"}, source="m")


_TEXT = st.one_of(st.text(max_size=40), st.from_regex(r"-?\d{1,30}", fullmatch=True),
                  st.from_regex(r"\d{1,7}x\d{1,7}", fullmatch=True), st.sampled_from(["dynamic", "true", "nan", "inf"]))


@settings(max_examples=300)
@given(changes=st.dictionaries(st.sampled_from(sorted(VALID)), _TEXT, min_size=1, max_size=4),
       dropped=st.sets(st.sampled_from(sorted(VALID)), max_size=2))
def test_any_metadata_is_accepted_in_range_or_refused_in_one_line(changes, dropped):
    props = {k: v for k, v in {**VALID, **changes}.items() if k not in dropped}
    try:
        meta = ExportMetadata.from_props(props, source="m.onnx")
    except TinyvimError as exc:
        assert "\n" not in str(exc)
        event("refused")
        return
    event("accepted")
    again = ExportMetadata.from_props(meta.to_props(), source="again")     # "" version is written as ours
    assert meta is not None and dataclasses.replace(again, tinyvim_version=meta.tinyvim_version) == meta
    if meta.input_size:
        assert all(0 < s <= MAX_IMAGE_SIDE and s % 32 == 0 for s in meta.input_size)
        if meta.batch:
            assert meta.batch * meta.input_size[0] * meta.input_size[1] <= MAX_BATCH_PIXELS
    assert meta.batch is None or 1 <= meta.batch <= MAX_BATCH
    assert all(math.isfinite(v) for v in meta.mean + meta.std) and min(meta.std) > 0


# --------------------------------------------------------------------- the CLI on bad model files
def _tiny(path, *, metadata=None, batch=None, size=64):
    onnx.save(tiny_onnx(tiny_torch(), batch=batch, size=size, metadata=metadata), path)
    return path


def _assert_one_error(r, *expected):
    lines = [ln for ln in r.output.splitlines() if ln.strip() and not ln.startswith(("note:", "warning:"))]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "Traceback" not in r.output and all(e in lines[0] for e in expected), (expected, lines[0])


def test_bad_model_files_exit_2_before_any_work(tmp_path):
    report = tmp_path / "report.json"
    report.write_text("previous")
    files = {
        "garbage init_seed": (_tiny(tmp_path / "a.onnx", metadata=_props_with("init_seed", "9" * 40)), "init_seed"),
        "overflow batch": (_tiny(tmp_path / "b.onnx", metadata=_props_with("batch", str(2**70))), "batch"),
        "huge size": (_tiny(tmp_path / "c.onnx", metadata=_props_with("input_size", "65536x65536")), "input_size"),
        "nan std": (_tiny(tmp_path / "d.onnx", metadata=_props_with("std", "nan,1,1")), "std"),
        "huge graph dims": (_tiny(tmp_path / "e.onnx", size=2**20), "larger than 4096 on a side"),
        "huge graph batch": (_tiny(tmp_path / "f.onnx", batch=10**6), "above 4096"),
        "graph batch x size": (_tiny(tmp_path / "g.onnx", batch=4096, size=4096), "pixels per call"),
    }
    for name, (path, expected) in files.items():
        for args in (["validate", str(path), "--json", str(report)],
                     ["profile", "--backend", "ort", "--model", str(path), "--json", str(report)]):
            r = CliRunner().invoke(cli, args)
            _assert_one_error(r, expected)
            assert "validating" not in r.output and "timing" not in r.output, (name, r.output)
    assert report.read_text() == "previous"


# --------------------------------------------------------------------- engine sidecars
def _sidecar(**changes) -> dict:
    side = sc.make_sidecar(tinyvim_version="0.1.0", trt_version="10.3.0", gpu={"name": "H100", "compute_capability": "9.0"},
                           precision="fp16", profiles=[{"images": {"min": [1, 3, 64, 64], "opt": [4, 3, 64, 64],
                                                                   "max": [8, 3, 64, 64]}}],
                           onnx_path="m.onnx", onnx_sha256="0" * 64,
                           onnx_metadata=ExportMetadata("s", input_size=(64, 64), batch=None).to_props(),
                           build_seconds=1.0, strongly_typed=False, plugin=None)
    side.update(changes)
    return side


def _engine(tmp_path, document, raw: bytes | None = None):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine")
    sc.sidecar_path(engine).write_bytes(raw if raw is not None else json.dumps(document).encode())
    return engine


def test_make_sidecar_satisfies_the_schema(tmp_path):
    assert sc.sidecar_problems(_sidecar()) == []
    info = read_engine_info(_engine(tmp_path, _sidecar()))
    assert info.batch_range == (1, 8) and info.fixed_size == (64, 64)


BAD_SIDECAR = {
    "sidecar_version": [2, "1", True, None],
    "tensorrt_version": [10, "ten", ""],
    "compute_capability": [9.0, "9", "sm_90", None],
    "precision": ["int4", 16],
    "strongly_typed": ["false", 0],
    "profiles": [[], {}, [{}], [{"images": {"min": [1, 3, 64, 64]}}],
                 [{"images": {"min": [0, 3, 64, 64], "opt": [1, 3, 64, 64], "max": [1, 3, 64, 64]}}],
                 [{"images": {"min": [1, 3, 64, 64], "opt": [1, 3, 64, 64], "max": [10**9, 3, 64, 64]}}],
                 [{"images": {"min": [8, 3, 64, 64], "opt": [4, 3, 64, 64], "max": [8, 3, 64, 64]}}],
                 [{"images": {"min": ["1", 3, 64, 64], "opt": [1, 3, 64, 64], "max": [1, 3, 64, 64]}}],
                 [{"images": {"min": [1, 3, 64], "opt": [1, 3, 64], "max": [1, 3, 64]}}]],
    "onnx": [None, {"path": "m.onnx"}, {"path": "m.onnx", "sha256": "xyz"}],
    "onnx_metadata": [[], {"variant": 1}, "s"],
    "plugin": [3, ["a"]],
    "build_seconds": [-1, "1", None, float("nan")],
}


@pytest.mark.parametrize("key,value", [(k, v) for k, vs in BAD_SIDECAR.items() for v in vs])
def test_bad_sidecar_fields_are_refused(tmp_path, key, value):
    with pytest.raises(TinyvimError, match=f"not a valid engine sidecar \\({key}"):
        read_engine_info(_engine(tmp_path, _sidecar(**{key: value})))
    errors, _ = sc.check_sidecar(_sidecar(**{key: value}), trt_version="10.3.0",
                                 gpu={"name": "H100", "compute_capability": "9.0"})
    assert errors and key in errors[0]


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", b"[1, 2]", b"null", b"[" * 100_000, b"1e999",
                                 b'{"sidecar_version": 1}', b" " * (sc.MAX_SIDECAR_BYTES + 1)])
def test_sidecars_that_are_not_json_objects(tmp_path, raw):
    with pytest.raises(TinyvimError, match="not (a valid )?an? engine sidecar|not a valid engine sidecar"):
        read_engine_info(_engine(tmp_path, None, raw=raw))


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=12)


@settings(max_examples=150)
@given(changes=st.dictionaries(st.sampled_from(sorted(_sidecar())), _JSON, min_size=1, max_size=3))
def test_any_sidecar_is_read_or_refused_in_one_line(tmp_path_factory, changes):
    engine = _engine(tmp_path_factory.mktemp("side"), _sidecar(**changes))
    try:
        info = read_engine_info(engine)
    except TinyvimError as exc:
        assert "\n" not in str(exc)
        event("refused")
        return
    event("accepted")
    lo, hi = info.batch_range
    assert 1 <= lo <= hi <= MAX_BATCH and info.metadata is not None
