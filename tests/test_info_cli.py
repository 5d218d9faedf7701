"""`tinyvim info` reports the paper's figures."""
import json

import pytest
from click.testing import CliRunner

from tinyvim.cli import cli


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
