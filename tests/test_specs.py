"""ModelSpec / InputSpec (tinyvim.contract): the two values that say which model and which input,
checked once when built, and the export metadata made from them and read back into them."""
from __future__ import annotations

import dataclasses

import pytest

from tinyvim.contract import (
    DEFAULT_IMG_SIZE,
    MAX_BATCH,
    ExportMetadata,
    InputSpec,
    ModelSpec,
)
from tinyvim.errors import TinyvimError

SHA = "ab" * 32


def test_model_spec_normalises_and_checks_itself():
    assert ModelSpec("TinyViM-B").variant == "b"
    assert ModelSpec().random_weights and not ModelSpec(checkpoint="w.pth").random_weights
    with pytest.raises(TinyvimError, match="unknown variant 'x'"):
        ModelSpec("x")
    with pytest.raises(TinyvimError, match="weight seed"):
        ModelSpec(weight_seed=-1)
    with pytest.raises(TinyvimError, match="64 hex digits"):
        ModelSpec(checkpoint="w.pth", checkpoint_sha256="beef")
    with pytest.raises(TinyvimError, match="ema must be true or false"):
        ModelSpec(ema="yes")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ModelSpec().variant = "l"   # type: ignore[misc]
    # with_ re-checks: a copy cannot hold what the constructor refuses
    with pytest.raises(TinyvimError):
        ModelSpec().with_(variant="q")


def test_input_spec_checks_size_batch_and_workload():
    assert InputSpec().size == DEFAULT_IMG_SIZE and InputSpec().batch == 1
    assert InputSpec(None, None).dynamic_size and InputSpec(None, None).dynamic_batch
    assert InputSpec((64, 96), 2).describe() == "64x96, batch 2"
    with pytest.raises(TinyvimError, match="not divisible by 32"):
        InputSpec((200, 224))
    with pytest.raises(TinyvimError, match=f"--batch must be an integer from 1 to {MAX_BATCH}"):
        InputSpec(batch=0)
    with pytest.raises(TinyvimError, match="pixels per call"):
        InputSpec((4096, 4096), MAX_BATCH)
    with pytest.raises(TinyvimError, match="two integers"):
        InputSpec(("224", "224"))   # type: ignore[arg-type]
    # a dynamic side skips the workload check, which needs both
    assert InputSpec(None, MAX_BATCH).batch == MAX_BATCH


def test_metadata_is_built_from_the_specs_and_reads_back_into_them(tmp_path):
    model = ModelSpec("b", checkpoint=str(tmp_path / "w.pth"), checkpoint_sha256=SHA, ema=True, backbone=True,
                      weight_seed=7)
    inputs = InputSpec((64, 96), None)
    meta = ExportMetadata.build(model, inputs, scan="plugin", precision="fp16", opset=20)
    back = ExportMetadata.from_props(meta.to_props(), source="t")
    assert back == meta
    assert back.model == model and back.inputs == inputs
    assert (back.scan, back.precision, back.weights) == ("plugin", "fp16", "fp16")
    # allow_nonfinite is a way to load, not a fact about the file: not recorded
    assert ExportMetadata.build(model.with_(allow_nonfinite=True), inputs, scan="portable",
                                precision="fp32").model.allow_nonfinite is False


def test_metadata_refuses_to_write_what_it_could_not_read(tmp_path):
    meta = ExportMetadata.build(ModelSpec(), InputSpec(), scan="magic", precision="fp32")  # type: ignore[arg-type]
    with pytest.raises(TinyvimError, match="metadata 'scan' is invalid"):
        meta.to_props()
    meta = ExportMetadata.build(ModelSpec(), InputSpec(), scan="portable", precision="fp64")  # type: ignore[arg-type]
    with pytest.raises(TinyvimError, match="metadata 'precision' is invalid"):
        meta.to_props()
    with pytest.raises(ValueError, match="sha256"):   # a checkpoint without its digest is a caller's bug
        ExportMetadata.build(ModelSpec(checkpoint=str(tmp_path / "w.pth")), InputSpec(), scan="portable",
                             precision="fp32")


def test_model_spec_from_metadata_takes_overrides_that_are_given():
    meta = ExportMetadata("l", init_seed=3, input_size=(64, 64))
    assert ModelSpec.from_metadata(meta, variant=None, weight_seed=5) == ModelSpec("l", weight_seed=5)


@pytest.mark.parametrize("argv,message", [
    (["export", "--seed", "-1"], "--seed (weight seed) must be an integer from 0"),
    (["export", "--img-size", "64", "--batch", "0"], "--batch must be an integer from 1 to 4096"),
    (["export", "--img-size", "4096", "--batch", "4096"], "pixels per call"),
    (["validate", "m.onnx", "--init-seed", "-2"], "--init-seed (weight seed) must be an integer from 0"),
    (["info", "--variant", "q"], "invalid value for '--variant'"),
])
def test_the_option_groups_build_checked_specs_before_any_work(tmp_path, monkeypatch, argv, message):
    """model_options / input_options turn the flags into a ModelSpec / InputSpec as the command
    starts: a bad value is one `error:` line, exit 2, and nothing is written."""
    from click.testing import CliRunner

    from tinyvim.cli import cli
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert list(tmp_path.iterdir()) == []
