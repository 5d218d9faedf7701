"""The plugin contract table in docs/build-plugin.md is the rendering of the declared contract, verbatim."""
from pathlib import Path

from tinyvim.contract import SCAN_PLUGIN

README = Path(__file__).resolve().parents[1] / "docs" / "build-plugin.md"


def test_readme_holds_exactly_the_rendered_contract():
    text = README.read_text()
    rendered = SCAN_PLUGIN.markdown()
    assert text.count(rendered) == 1, "docs/build-plugin.md's plugin contract differs from `python -m tinyvim.contract`"
    # and the rendering says what the contract says (a change there shows up here)
    assert "| `d_state` | INT | kINT32 × 1 | 1..16 |" in rendered
    assert f'`plugin_namespace="{SCAN_PLUGIN.namespace}"`' in rendered
