"""`tinyvim info` reports the paper's figures."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tinyvim.cli import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("variant,params,params_nodist,gmacs", [
    ("s", "5.91 M", "5.68 M", "0.9"), ("b", "11.51 M", "11.13 M", "1.5"), ("l", "32.38 M", "31.87 M", "4.7")])
def test_info_reports_params_gmacs_and_ss2d_table(tmp_path, variant, params, params_nodist, gmacs):
    out = tmp_path / "info.json"
    res = CliRunner().invoke(cli, ["info", "--variant", variant, "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert f"{params} with dist_head" in res.output and f"{params_nodist} without" in res.output
    report = json.loads(out.read_text())
    assert f"{report['gmacs']:.1f}" == gmacs
    assert len(report["ss2d"]) == 5 and report["ss2d"][0]["scan_length"] == 49
    assert report["ss2d"][-1]["block"].startswith("network.6.") and report["ss2d"][-1]["block"] in res.output


def test_info_rejects_bad_size_with_one_line():
    res = CliRunner().invoke(cli, ["info", "--img-size", "224,230"])
    assert res.exit_code == 2
    assert "224x230 is not divisible by 32" in res.output


def test_shipped_figures_are_the_models_own():
    """model_facts.json (what `tinyvim info` answers from without torch) was written from this
    architecture and equals a fresh count: a model edit that changes the figures fails here until
    `python -m tinyvim.tools.model_info` rewrites it."""
    from tinyvim.contract import DEFAULT_IMG_SIZE, ModelSpec
    from tinyvim.tools import model_info
    doc = json.loads(model_info.FACTS.read_text())
    assert doc["fingerprint"] == model_info.architecture_fingerprint(), \
        "the architecture changed: run `python -m tinyvim.tools.model_info`"
    spec = ModelSpec("s", backbone=True)   # the classifiers' figures are held to the paper's above
    assert doc["reports"][model_info.facts_key(spec, DEFAULT_IMG_SIZE)] == \
        json.loads(json.dumps(model_info.compute_report(spec, DEFAULT_IMG_SIZE)))


def _info_without_torch(args, cache):
    """`tinyvim info ARGS` in a fresh interpreter where importing torch fails."""
    code = ("import sys\nsys.modules['torch'] = None\nfrom tinyvim.cli import main\n"
            f"main({args!r})")
    env = {**os.environ, "TINYVIM_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_info_answers_without_torch_from_the_table_then_from_the_cache(tmp_path):
    r = _info_without_torch(["info", "--variant", "b", "--backbone"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "TinyViM-B backbone @ 224x224" in r.stdout and "10.74 M" in r.stdout
    # another size: not known yet (torch is needed), computed once, then read back without torch
    assert _info_without_torch(["info", "--img-size", "256"], tmp_path).returncode != 0
    res = CliRunner().invoke(cli, ["info", "--img-size", "256", "--json", str(tmp_path / "a.json")],
                             env={"TINYVIM_CACHE_DIR": str(tmp_path)})
    assert res.exit_code == 0, res.output
    cached = list((tmp_path / "info").glob("s-classifier-256x256-*.json"))
    assert len(cached) == 1
    r = _info_without_torch(["info", "--img-size", "256", "--json", str(tmp_path / "b.json")], tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads((tmp_path / "b.json").read_text())
    cached[0].write_text('{"fingerprint": "x", "reports": {}')     # damaged: recomputed, never trusted
    from tinyvim.tools.model_info import _read
    assert _read(cached[0], "s-classifier-256x256", "x") is None
