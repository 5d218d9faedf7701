"""Official-format checkpoints in, clear one-line errors for files that do not fit."""
import argparse
import pickle
import subprocess
import sys

import pytest
import torch

import tinyvim
from helpers import make_model
from tinyvim.errors import TinyvimError


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def model_s():
    return make_model("s")


def _training_checkpoint(model, ema_model=None):
    """What the official training script saves (the release's checkpoint layout)."""
    return {"model": model.state_dict(), "model_ema": (ema_model or model).state_dict(),
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]}, "lr_scheduler": {"last_epoch": 3},
            "epoch": 299, "scaler": {"scale": 65536.0},
            "args": argparse.Namespace(model="tinyvim_s", lr=1e-3, distillation_type="hard")}


def test_official_training_checkpoint_round_trips_strictly(tmp_path, model_s):
    path = tmp_path / "checkpoint.pth"
    torch.save(_training_checkpoint(model_s), path)
    loaded = tinyvim.create_model("s", checkpoint=path)
    assert _same_weights(loaded, model_s)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded(x), model_s(x))


def test_ema_weights_are_picked_with_ema_flag(tmp_path, model_s):
    ema = make_model("s", seed=7)
    path = tmp_path / "ckpt.pth"
    torch.save(_training_checkpoint(model_s, ema), path)
    assert _same_weights(tinyvim.create_model("s", checkpoint=path, ema=True), ema)
    assert _same_weights(tinyvim.create_model("s", checkpoint=path), model_s)
    torch.save({"model": model_s.state_dict()}, path)
    with pytest.raises(TinyvimError, match="no 'model_ema' entry"):
        tinyvim.create_model("s", checkpoint=path, ema=True)


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "ddp_prefix"])
def test_other_layouts(tmp_path, model_s, wrap):
    sd = model_s.state_dict()
    obj = {"bare": sd, "state_dict": {"state_dict": sd},
           "ddp_prefix": {"model": {f"module.{k}": v for k, v in sd.items()}}}[wrap]
    path = tmp_path / "c.pth"
    torch.save(obj, path)
    assert _same_weights(tinyvim.create_model("s", checkpoint=path), model_s)


def test_fp16_stored_tensors_are_upcast(tmp_path, model_s):
    path = tmp_path / "half.pth"
    torch.save({k: (v.half() if v.is_floating_point() else v) for k, v in model_s.state_dict().items()}, path)
    loaded = tinyvim.create_model("s", checkpoint=path)
    w = loaded.state_dict()["head.weight"]
    assert w.dtype == torch.float32
    assert torch.equal(w, model_s.state_dict()["head.weight"].half().float())


def test_checkpoint_without_dist_head_gives_head_only_model(tmp_path, model_s):
    sd = {k: v for k, v in model_s.state_dict().items() if not k.startswith("dist_head.")}
    path = tmp_path / "nodist.pth"
    torch.save({"model": sd}, path)
    loaded = tinyvim.create_model("s", checkpoint=path)
    assert loaded.dist_head is None
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model_s.head(_pooled(model_s, x)), atol=1e-6)


def _pooled(model, x):
    with torch.no_grad():
        h = model.patch_embed(x)
        for blk in model.network:
            h = blk(h)
        return model.norm(h).flatten(2).mean(-1)


def test_backbone_loads_classification_checkpoint_like_official(tmp_path, model_s):
    path = tmp_path / "cls.pth"
    torch.save({"model": model_s.state_dict()}, path)
    bb = tinyvim.create_model("s", checkpoint=path, backbone=True)
    sd = bb.state_dict()
    assert torch.equal(sd["network.4.4.op.A_logs"], model_s.state_dict()["network.4.4.op.A_logs"])
    assert torch.equal(sd["norm0.running_var"], torch.ones(48))          # norms stay at init
    # its own checkpoint (with norm0..norm6) loads strictly, norms included
    bb.norm0.running_var.fill_(3.0)
    own = tmp_path / "bb.pth"
    torch.save({"state_dict": bb.state_dict()}, own)
    again = tinyvim.create_model("s", checkpoint=own, backbone=True)
    assert _same_weights(again, bb)


def test_wrong_variant_says_which_variant_it_looks_like(tmp_path, model_s):
    path = tmp_path / "s.pth"
    torch.save({"model": model_s.state_dict()}, path)
    with pytest.raises(TinyvimError, match=r"does not fit TinyViM-B: it looks like TinyViM-S; use --variant s"):
        tinyvim.create_model("b", checkpoint=path)


def test_missing_and_unexpected_keys_are_listed(tmp_path, model_s):
    sd = dict(model_s.state_dict())
    sd.pop("network.6.5.op.Ds")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(TinyvimError) as err:
        tinyvim.create_model("s", checkpoint=path)
    msg = str(err.value)
    assert "1 missing keys (network.6.5.op.Ds)" in msg and "1 unexpected keys (extra.weight)" in msg
    assert "\n" not in msg


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"\x80\x02this is not a checkpoint")
    with pytest.raises(TinyvimError, match="cannot read checkpoint .*corrupt"):
        tinyvim.create_model("s", checkpoint=bad)
    with pytest.raises(TinyvimError, match="checkpoint not found"):
        tinyvim.create_model("s", checkpoint=tmp_path / "nope.pth")


class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": _Payload()}, f)
    with pytest.raises(TinyvimError, match="cannot read checkpoint"):
        tinyvim.create_model("s", checkpoint=path)
    assert "pwned" not in capsys.readouterr().out


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tinyvim.cli", *args], capture_output=True, text=True)


def test_cli_errors_are_one_line_without_traceback(tmp_path, model_s):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"garbage")
    s_ckpt = tmp_path / "s.pth"
    torch.save({"model": model_s.state_dict()}, s_ckpt)
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in model_s.state_dict().items() if "network.6" not in k}, partial)
    cases = {
        ("info", "--checkpoint", str(corrupt)): "cannot read checkpoint",
        ("info", "--variant", "l", "--checkpoint", str(s_ckpt)): "looks like TinyViM-S",
        ("info", "--checkpoint", str(partial)): "missing keys",
        ("info", "--img-size", "230"): "230x230 is not divisible by 32",
    }
    for args, expected in cases.items():
        res = _cli(*args)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("note:")]
        assert res.returncode == 2, (args, res.stderr)
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in res.stderr, (args, res.stderr)
