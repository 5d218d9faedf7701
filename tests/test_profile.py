"""Profiling: statistics on known timing arrays, the timing loop on a scripted runner, and
one quick end-to-end `tinyvim profile` run (torch backend, 2 iterations)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tinyvim.tools import profile as prof
from tinyvim.backends.base import BaseRunner


def test_latency_stats_on_known_array():
    times_s = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], dtype=float) * 1e-3  # ms 1..10
    s = prof.latency_stats(times_s)
    assert s["mean"] == pytest.approx(5.5)
    assert s["p50"] == pytest.approx(5.5)
    # linear interpolation: position 0.9 * 9 = 8.1 -> 9 + 0.1 * (10 - 9)
    assert s["p90"] == pytest.approx(9.1)
    assert s["p99"] == pytest.approx(9.91)
    assert s["std"] == pytest.approx(np.sqrt(8.25))  # population std of 1..10
    assert (s["min"], s["max"], s["iters"]) == (1.0, 10.0, 10)
    assert prof.throughput(8, 4.0) == pytest.approx(2000.0)


class ScriptedRunner(BaseRunner):
    """Reports pre-set compute and copy times instead of measuring."""

    def __init__(self, times):
        super().__init__("scripted")
        self._times = iter(times)
        self.calls = 0

    input_names = property(lambda self: ["images"])
    output_names = property(lambda self: ["logits"])

    def activate_impl(self):
        pass

    def deactivate_impl(self):
        pass

    def infer_impl(self, feed):
        self.calls += 1
        return {"logits": np.zeros((1, 10))}, {"compute": next(self._times), "h2d": 0.5e-3}


def test_time_runner_discards_warmup_and_uses_runner_times():
    runner = ScriptedRunner([1.0, 1.0, 0.002, 0.004, 0.006])
    with runner:
        times, phases = prof.time_runner(runner, {"images": np.zeros((1, 3, 32, 32))}, warmup=2, iters=3)
    np.testing.assert_allclose(times, [0.002, 0.004, 0.006])  # the 1 s warm-up calls are gone
    assert runner.calls == 5
    assert phases == {"h2d": pytest.approx(0.5e-3)}


def test_profile_backends_skips_unsupported_batches_and_formats():
    entries = prof.profile_backends({"scripted": lambda: ScriptedRunner([0.01] * 100)}, [1, 8], (32, 32),
                                    warmup=1, iters=4, batch_ok=lambda n, b: "fixed batch 1" if b == 8 else None)
    assert entries[0]["latency_ms"]["mean"] == pytest.approx(10.0)
    assert entries[0]["throughput"] == pytest.approx(100.0)
    assert entries[0]["phases_ms"]["h2d"] == pytest.approx(0.5)
    assert entries[1] == {"backend": "scripted", "batch": 8, "skipped": "fixed batch 1"}
    table = prof.format_table(entries)
    assert "10.00" in table and "skipped: fixed batch 1" in table


def test_environment_names_versions():
    env = prof.environment(2)
    assert env["threads"] == 2 and env["torch"] and env["onnxruntime"] and env["cpu"]


def test_profile_cli_torch_json_and_plot(tmp_path):
    from tinyvim.commands.engines import profile
    out, png = tmp_path / "p.json", tmp_path / "p.png"
    result = CliRunner().invoke(profile, ["--backend", "torch-fused", "--variant", "s", "--img-size", "64",
                                          "--batch", "1,2", "--warmup", "1", "--iters", "2", "--threads", "2",
                                          "--json", str(out), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert [(e["backend"], e["batch"]) for e in doc["results"]] == [("torch-fused", 1), ("torch-fused", 2)]
    assert all(e["latency_ms"]["iters"] == 2 and e["latency_ms"]["mean"] > 0 for e in doc["results"])
    assert doc["environment"]["threads"] == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[2/2] torch-fused batch 2" in result.output


def test_profile_cli_bad_input_exit_2(tmp_path):
    from tinyvim.commands.engines import profile
    r = CliRunner().invoke(profile, ["--backend", "tpu"])
    assert r.exit_code == 2 and "unknown backend 'tpu'" in r.output
    r = CliRunner().invoke(profile, ["--backend", "trt"])
    assert r.exit_code == 2 and "needs --model with a TensorRT engine" in r.output
    r = CliRunner().invoke(profile, ["--backend", "torch", "--img-size", "100"])
    assert r.exit_code == 2 and "not divisible by 32" in r.output
    r = CliRunner().invoke(profile, ["--batch", "1,x"])
    assert r.exit_code == 2 and "--batch" in r.output


def test_profile_ort_without_model_exports_a_dynamic_batch_onnx(tmp_path, monkeypatch):
    import onnx

    from test_runners import tiny_onnx, tiny_torch
    from tinyvim.commands.engines import profile
    calls = []

    def fake_export(output, model, inputs, **kwargs):  # the tiny net stands in for TinyViM: only the plumbing
        calls.append((model, inputs, kwargs))
        onnx.save(tiny_onnx(tiny_torch(), size=64), output)

        class Result:
            path = output
        return Result()

    monkeypatch.setattr(prof, "export_onnx", fake_export)
    out = tmp_path / "p.json"
    r = CliRunner().invoke(profile, ["--backend", "ort", "--img-size", "64", "--batch", "1,3", "--warmup", "0",
                                     "--iters", "3", "--json", str(out)])
    assert r.exit_code == 0, r.output
    from tinyvim.contract import InputSpec, ModelSpec
    assert calls == [(ModelSpec("s"), InputSpec((64, 64), None), {})]    # dynamic batch: one file for 1 and 3
    doc = json.loads(out.read_text())
    assert [(e["backend"], e["batch"], e["latency_ms"]["iters"]) for e in doc["results"]] == [("ort", 1, 3), ("ort", 3, 3)]
