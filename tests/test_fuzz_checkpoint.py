"""Fuzzing the checkpoint boundary: hostile pickles, odd tensor kinds, byte flips and
truncations. Every case ends in a usable state dict or one `error:` line with exit code 2 -
never a traceback, never a payload run, never a changed output file."""
from __future__ import annotations

import argparse
import os
import pickle
import zipfile

import pytest
import torch
from click.testing import CliRunner
from hypothesis import event, given, settings
from hypothesis import strategies as st

import tinyvim
from tinyvim.cli import cli
from tinyvim.errors import TinyvimError
from tinyvim.model.checkpoint import INT_DTYPES, read_checkpoint


def _assert_one_error(result, *expected: str) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def _assert_usable(state: dict) -> None:
    """What read_checkpoint promises about whatever it returns."""
    for key, value in state.items():
        assert isinstance(key, str) and isinstance(value, torch.Tensor) and value.layout == torch.strided
        assert value.dtype in (torch.float32,) + INT_DTYPES, value.dtype      # floats upcast to float32
        if value.is_floating_point():
            assert torch.isfinite(value).all()


@pytest.fixture(scope="module")
def s_state():
    return tinyvim.create_model("s").state_dict()


# --------------------------------------------------------------------- hostile pickles
class _Payload:
    """Unpickling this would create `path` (open(path, 'w'))."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _SystemPayload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _hostile_files(folder, marker):
    """(name, path) of checkpoints whose unpickling would create `marker`."""
    made = []
    for i, payload in enumerate([_Payload(marker), _SystemPayload(marker)]):
        for layout in ("bare", "in_model", "in_tensor_dict"):
            obj = {"bare": payload, "in_model": {"model": payload},
                   "in_tensor_dict": {"model": {"w": torch.zeros(2), "evil": payload}}}[layout]
            zip_path = folder / f"zip_{i}_{layout}.pth"
            torch.save(obj, zip_path)
            legacy = folder / f"legacy_{i}_{layout}.pth"
            torch.save(obj, legacy, _use_new_zipfile_serialization=False)
            made += [zip_path, legacy]
        for protocol in (0, 2, 5):
            raw = folder / f"raw_{i}_p{protocol}.pth"
            raw.write_bytes(pickle.dumps({"model": payload}, protocol=protocol))
            made.append(raw)
    deep = folder / "deep.pth"
    deep.write_bytes(b"(" * 100_000 + b".")          # MARK bomb / deep nesting
    made.append(deep)
    return made


def test_hostile_pickles_never_run_and_fail_in_one_line(tmp_path):
    marker = tmp_path / "PWNED"
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")
    files = _hostile_files(tmp_path, marker)
    assert len(files) == 19
    for path in files:
        r = CliRunner().invoke(cli, ["export", "--img-size", "64", "--checkpoint", str(path), "-o", str(out)])
        _assert_one_error(r, "cannot read checkpoint")
        assert not marker.exists(), path
    assert out.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".pth") \
        == ["out.onnx"]


# --------------------------------------------------------------------- odd contents
def _odd_checkpoints(s_state):
    full = dict(s_state)
    with_module = {f"module.{k}": v for k, v in full.items()}
    bias = s_state["head.bias"]
    quantized = torch.quantize_per_tensor(bias, 0.1, 0, torch.qint8)
    return {
        # contents that stop at the entry itself (a tiny dict is enough)
        "int key": ({1: bias}, "key 1 (of type int) is not a parameter name"),
        "tuple key": ({("a", 1): bias}, "(of type tuple) is not a parameter name"),
        "meta tensor": ({"w": torch.empty(3, device="meta")}, "is a meta tensor without data"),
        "sparse coo": ({"w": bias.to_sparse()}, "sparse_coo tensor, not a dense one"),
        "sparse csr": ({"w": torch.eye(3).to_sparse_csr()}, "sparse_csr tensor, not a dense one"),
        "quantized": ({"w": quantized}, "is a quantized tensor"),
        "complex": ({"w": bias.to(torch.complex64)}, "has dtype complex64"),
        "bool": ({"w": bias > 0}, "has dtype bool"),
        "float8": ({"w": bias.to(torch.float8_e5m2)}, "has dtype float8_e5m2"),
        "nan weights": ({"w": torch.tensor([1.0, float("nan")])}, "1 non-finite value(s)"),
        "inf fp16 weights": ({"w": torch.tensor([float("inf")] * 3, dtype=torch.float16)}, "3 non-finite value(s)"),
        "expanded view": ({"w": torch.zeros(1, 224).expand(10**7, 224)}, "is an expanded view"),
        "string value": ({"w": bias, "x": "text"}, "is of type str, not a tensor"),
        "nested dict value": ({"w": bias, "x": {"y": bias}}, "is of type dict, not a tensor"),
        "duplicate after module.": ({"w": bias, "module.w": bias}, "appears twice"),
        "model_ema not a dict": ({"model_ema": [1, 2]}, "'model_ema' entry is a list"),
        "list": ([bias], "holds a list, not a state dict"),
        "tensor": (bias, "holds a Tensor, not a state dict"),
        "none": (None, "holds a NoneType"),
        "empty": ({}, "has no model weights"),
        "only numbers": ({"epoch": 3, "args": argparse.Namespace(lr=0.1)}, "has no model weights"),
        # contents that need the whole model to be noticed
        "int weights": ({**full, "head.bias": bias.long()}, "head.bias is int64"),
        "0-dim head": ({**full, "head.weight": torch.tensor(1.0)}, "head.weight has shape ()"),
        "0-dim stem": ({**full, "patch_embed.2.c.weight": torch.tensor(1.0)}, "shape mismatches"),
        "huge head": ({**full, "head.weight": torch.zeros(200_000, 1)}, "not a TinyViM classifier"),
        "wrong shape": ({**with_module, "module.network.6.5.op.Ds": torch.zeros(7)}, "does not fit TinyViM-S"),
    }


@pytest.mark.filterwarnings("ignore::UserWarning")   # torch: quantized tensors deprecated, sparse CSR beta
def test_odd_checkpoint_contents_exit_2_in_one_line(tmp_path, s_state):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")
    cases = _odd_checkpoints(s_state)
    for name, (obj, expected) in cases.items():
        path = tmp_path / "odd.pth"
        torch.save(obj, path)
        ema = ["--ema"] if "model_ema" in name else []
        r = CliRunner().invoke(cli, ["export", "--img-size", "64", "--checkpoint", str(path), "-o", str(out), *ema])
        _assert_one_error(r, expected)
    assert out.read_bytes() == b"previous"


def test_nonfinite_weights_load_only_when_allowed(tmp_path, s_state):
    path = tmp_path / "nan.pth"
    state = dict(s_state)
    state["head.bias"] = state["head.bias"].clone()
    state["head.bias"][7] = float("nan")
    torch.save({"model": state}, path)
    with pytest.raises(TinyvimError, match="head.bias has 1 non-finite value.*--allow-nonfinite"):
        tinyvim.create_model("s", checkpoint=path)
    model = tinyvim.create_model("s", checkpoint=path, allow_nonfinite=True)
    assert torch.isnan(model.head.bias[7])


# --------------------------------------------------------------------- byte flips and truncations
@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """A training-style checkpoint in miniature: the zip/pickle structure of an official file
    (Namespace, nested dicts, fp16 and int tensors) at a size that makes each example cheap."""
    path = tmp_path_factory.mktemp("ckpt") / "small.pth"
    torch.save({"model": {"a.weight": torch.randn(4, 4), "a.bias": torch.randn(4).half(),
                          "bn.num_batches_tracked": torch.tensor(7)},
                "epoch": 3, "args": argparse.Namespace(lr=0.1, model="tinyvim_s")}, path)
    data = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("data.pkl"))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    return data, (start, start + info.compress_size)


def _load_mutated(tmp_path, data: bytes):
    path = tmp_path / "mutated.pth"
    path.write_bytes(data)
    try:
        state = read_checkpoint(path)
    except TinyvimError as exc:
        assert "\n" not in str(exc)
        event("refused")
        return None
    _assert_usable(state)
    event("loaded")
    return state


@settings(max_examples=60)
@given(data=st.data())
def test_byte_flips_load_cleanly_or_fail_in_one_line(tmp_path_factory, small_checkpoint, data):
    raw, (pkl_start, pkl_end) = small_checkpoint
    flips = data.draw(st.lists(st.tuples(
        st.one_of(st.integers(pkl_start, pkl_end - 1), st.integers(0, len(raw) - 1)),   # the pickle, or anywhere
        st.integers(0, 255)), min_size=1, max_size=4))
    mutated = bytearray(raw)
    for offset, value in flips:
        mutated[offset] = value
    _load_mutated(tmp_path_factory.mktemp("flip"), bytes(mutated))


@settings(max_examples=25)
@given(cut=st.integers(0, 10**9))
def test_truncations_fail_in_one_line(tmp_path_factory, small_checkpoint, cut):
    raw, _ = small_checkpoint
    assert _load_mutated(tmp_path_factory.mktemp("cut"), raw[: cut % len(raw)]) is None


def test_byte_flips_in_a_real_checkpoint(tmp_path, s_state):
    """Flips inside an S checkpoint's tensor data load (the bytes are valid floats) but the
    sha256 recorded by the export no longer matches: validate warns (tests/test_fuzz_cli.py)."""
    path = tmp_path / "s.pth"
    torch.save({"model": s_state}, path)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        pkl = next(i for i in zf.infolist() if i.filename.endswith("data.pkl"))
        tensor = next(i for i in zf.infolist() if "/data/" in i.filename and i.file_size > 4096)
    offsets = {"zip magic": 0, "pickle": pkl.header_offset + 30 + len(pkl.filename) + 40,
               "tensor data": tensor.header_offset + 30 + len(tensor.filename) + len(tensor.extra) + 100,
               "central directory": len(raw) - 40}
    outcomes = {}
    for where, offset in offsets.items():
        mutated = bytearray(raw)
        mutated[offset] ^= 0xFF
        (tmp_path / "m.pth").write_bytes(bytes(mutated))
        try:
            tinyvim.create_model("s", checkpoint=tmp_path / "m.pth")
            outcomes[where] = "loaded"
        except TinyvimError as exc:
            assert "\n" not in str(exc)
            outcomes[where] = "error"
    assert outcomes["zip magic"] == "error" and outcomes["tensor data"] == "loaded", outcomes
