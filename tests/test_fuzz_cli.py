"""Fuzzing the command line: out-of-range, non-finite and malformed option values for every
command, click's own usage errors, and a few real processes for the exit code and stderr as a
shell sees them. Each case: exit code 2, exactly one `error:` line, no traceback, no file
written or changed."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import onnx
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from test_runners import tiny_onnx, tiny_torch
from tinyvim.cli import cli
from tinyvim.contract import MAX_BATCH, MAX_COUNT, MAX_THREADS, ExportMetadata


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A file with TinyViM's signature and valid metadata (batch 2, 64x64): argument checks
    that need the model run against it in milliseconds."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    meta = ExportMetadata("s", input_size=(64, 64), batch=2).to_props()
    onnx.save(tiny_onnx(tiny_torch(), batch=2, size=64, metadata=meta), path)
    return path


def _assert_one_error(r) -> str:
    lines = [ln for ln in r.output.splitlines() if ln.strip() and not ln.startswith(("note:", "warning:"))]
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output, r.output
    return lines[0]


# values that must all be refused, by kind
_NON_FINITE = st.sampled_from(["nan", "inf", "-inf", "NaN", "1e999"])
_NOT_NUMBER = st.sampled_from(["", "x", "1,2", "0x10", "--", "1 2", "☃"])
_NEGATIVE = st.floats(max_value=-1e-12, allow_nan=False, allow_infinity=False).map(repr)
_BAD_SIZES = st.one_of(
    st.integers(1, 10**7).filter(lambda n: n % 32).map(str),                 # not a multiple of 32
    st.integers(4097, 10**12).map(lambda n: str(n - n % 32)),                  # above 4096
    st.sampled_from(["0", "-224", "224x", "x224", "224x230", "224,230", "224x224x3", "abc", "22 4", "", "2e2",
                     "１２８", "224X0", "9" * 50]))


def _int_outside(lo, hi):
    return st.one_of(st.integers(max_value=lo - 1), st.integers(min_value=hi + 1)).map(str)


def _cases(model: str):
    """(arguments before the bad value, option, strategy of bad values)."""
    validate = ["validate", model]
    profile = ["profile", "--backend", "torch", "--img-size", "64"]
    export = ["export", "--img-size", "64"]
    return [
        (validate, "--atol", st.one_of(_NON_FINITE, _NEGATIVE, _NOT_NUMBER)),
        (validate, "--rtol", st.one_of(_NON_FINITE, _NEGATIVE, _NOT_NUMBER)),
        (validate, "--threads", _int_outside(1, MAX_THREADS)),
        (validate, "--num-inputs", _int_outside(1, MAX_COUNT)),
        (validate, "--seed", st.integers(max_value=-1).map(str)),
        (validate, "--init-seed", st.integers(max_value=-1).map(str)),
        (validate, "--batch", st.one_of(_int_outside(1, MAX_BATCH), st.sampled_from(["1", "3", "4096"]))),  # fixed 2
        (validate, "--img-size", st.one_of(_BAD_SIZES, st.sampled_from(["96", "64x96", "4096"]))),       # fixed 64
        (validate, "--crop-pct", st.one_of(_NON_FINITE, _NEGATIVE, st.sampled_from(["0", "1.01", "1e9"]))),
        (validate, "--variant", st.sampled_from(["x", "m", "tinyvim-q", ""])),
        (profile, "--duration", st.one_of(_NON_FINITE, _NEGATIVE, st.sampled_from(["0", "3600.5", "1e12"]))),
        (profile, "--iters", _int_outside(1, MAX_COUNT)),
        (profile, "--warmup", _int_outside(0, MAX_COUNT)),
        (profile, "--threads", _int_outside(1, MAX_THREADS)),
        (profile, "--seed", st.integers(max_value=-1).map(str)),
        (profile, "--batch", st.one_of(_int_outside(1, MAX_BATCH), st.sampled_from(["1,0", "1,x", ",", "1,,5000"]))),
        (["profile", "--backend", "torch"], "--img-size", _BAD_SIZES),
        (["profile"], "--backend", st.sampled_from(["tpu", ",", "torch,npu"])),
        (export, "--batch", _int_outside(1, MAX_BATCH)),
        (export, "--opset", st.one_of(_int_outside(18, 25), _NOT_NUMBER)),
        (export, "--seed", st.integers(max_value=-1).map(str)),
        (["export", "--batch", "4096"], "--img-size", st.sampled_from(["288", "4096", "512x4096"])),   # batch x size
        (["export"], "--img-size", _BAD_SIZES),
        (["export"], "--scan", st.sampled_from(["fast", "PLUGINS", ""])),
        (["info"], "--img-size", _BAD_SIZES),
        (["info"], "--variant", st.sampled_from(["xl", "", "S1"])),
    ]


@settings(max_examples=200)
@given(data=st.data())
def test_bad_option_values_exit_2_in_one_line(tiny_model, tmp_path_factory, data):
    cases = _cases(str(tiny_model))
    prefix, option, values = data.draw(st.sampled_from(cases), label="case")
    value = data.draw(values, label="value")
    folder = tmp_path_factory.mktemp("cli")
    out = folder / "out.json"
    r = CliRunner().invoke(cli, [*prefix, f"{option}={value}", "--json", str(out)])
    _assert_one_error(r)
    assert not out.exists() and os.listdir(folder) == []
    assert not any(marker in r.output for marker in ("tracing", "timing", "validating", "parameters"))


def test_every_case_is_drawn(tiny_model):
    # hypothesis draws the case first: with 200 examples each of the 26 cases comes up
    assert len(_cases(str(tiny_model))) == 26


@pytest.mark.parametrize("args,expected", [
    (["export", "--bogus"], "no such option '--bogus'"),
    (["export", "--batch"], "option '--batch' requires an argument"),
    (["validate"], "missing argument 'MODEL'"),
    (["frobnicate"], "no such command 'frobnicate'"),
    (["export", "--precision", "fp8"], "'fp8' is not one of 'fp32', 'fp16'"),
    (["info", "--json", "/"], "is a directory"),
])
def test_click_usage_errors_are_one_line(args, expected):
    r = CliRunner().invoke(cli, args)
    line = _assert_one_error(r)
    assert expected in line and line.endswith("--help`)"), line


# --------------------------------------------------------------------- real processes
def test_real_processes_print_one_line_and_exit_2(tmp_path, tiny_model):
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.tensor([math.nan])}}, evil)
    commands = [    # one per way out: an engines command, a group command, click's parser (each imports torch)
        ["validate", str(tiny_model), "--atol", "nan"],
        ["export", "--img-size", "64", "--checkpoint", str(evil), "-o", "/dev/full"],
        ["export", "--bogus"],
    ]
    procs = [subprocess.Popen([sys.executable, "-m", "tinyvim.cli", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path) for args in commands]
    for args, proc in zip(commands, procs):
        out, err = proc.communicate(timeout=120)
        lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("note:")]
        assert proc.returncode == 2, (args, err)
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (args, err)
        assert out == "", (args, out)
    assert sorted(os.listdir(tmp_path)) == ["evil.pth"]
